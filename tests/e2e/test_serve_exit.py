"""``minerva serve`` ends cleanly: on a port already in use with one error naming the port
(exit 1), and on SIGTERM while the model loads (exit 0). Both used to abort now and then with
a C++ terminate (exit 134): the interpreter shut down while the load thread was inside torch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tests.e2e.conftest import ROOT
from tests.ports import free_port

RUNS = 4


def test_busy_port_is_a_clean_error_every_time():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port),
               "--device", "cpu"]  # fmt: skip
        # Started together: the runs overlap, as the repeated tries of the report did.
        procs = [
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(RUNS)
        ]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 1, (code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("minerva: error: cannot listen on 127.0.0.1:"), err
        assert f"port {port} is already in use" in lines[-1] and "--port" in lines[-1]
        assert "Traceback" not in err and "terminate" not in err
        assert "Uvicorn running" not in out + err and "model loaded" not in err


def test_sigterm_while_the_model_loads_exits_0():
    """Without the fix this aborted whenever the signal came during the load's torch work."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "minerva.cli", "serve", "--port", str(port),
           "--device", "cpu", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    status, deadline = None, time.monotonic() + 120  # a hang guard, not a speed check
    while status not in ("loading", "ok") and time.monotonic() < deadline:
        try:  # the port listens (and says "loading") while the model loads
            status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"]
        except httpx.HTTPError:
            time.sleep(0.01)
    time.sleep(0.5)  # into the load's torch work (the very first moments exited cleanly)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 0, (status, proc.returncode, out)
    assert "terminate" not in out and "Traceback" not in out, out
    assert "Uvicorn running on http://127.0.0.1:" in out  # said where, on the pre-bound socket
