"""``minerva serve`` on a port already in use: one clean error naming the port, exit 1, every
time (it used to abort with a C++ terminate now and then: uvicorn exited mid model load)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.e2e.conftest import ROOT

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
