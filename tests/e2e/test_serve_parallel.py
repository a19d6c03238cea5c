"""``minerva serve --tensor-parallel-size 2`` on the CPU (gloo): it serves, and when a rank is
killed the next request answers 503 naming the rank and the server exits 1 for a supervisor to
restart it (no hang)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from tests.e2e.conftest import ROOT
from tests.ports import free_port


def test_killed_rank_fails_the_server():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port), "--device", "cpu",
           "--tensor-parallel-size", "2", "--num-threads", "1", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        status, deadline = None, time.monotonic() + 180  # a hang guard, not a speed check
        while status != "ok" and time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"{base}/health", timeout=5).json()["status"]
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert status == "ok", proc.poll()
        model = httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"]
        body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4}
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=60).status_code == 200
        children = psutil.Process(proc.pid).children()  # the rank, multiprocessing's tracker
        (rank1,) = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        os.kill(rank1.pid, signal.SIGKILL)
        failed = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        assert failed.status_code == 503
        assert "parallel rank 1" in failed.json()["error"]["message"]
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode == 1, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
