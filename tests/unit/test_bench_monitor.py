"""The resource monitor: RSS and CPU of another process, and finding a local server's PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from minerva.bench.monitor import ResourceMonitor, find_server_pid

CHILD = """
import time
data = b"x" * (160 * 2**20)  # written, so resident
end = time.time() + 1.0
while time.time() < end:
    pass  # one busy core
print("done", flush=True)
time.sleep(5)
"""


def test_monitor_sees_another_process_memory_and_cpu():
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        with ResourceMonitor(proc.pid, interval=0.05) as mon:
            assert proc.stdout.readline().strip() == "done"
        s = mon.summary
        assert s.num_samples >= 10
        assert 160 * 2**20 < s.peak_rss_bytes < 400 * 2**20
        assert s.mean_rss_bytes <= s.peak_rss_bytes
        assert s.mean_cpu_percent > 30  # percent of one core; the child spun all along
        assert 0 <= s.mean_system_cpu_percent <= 100
        assert s.peak_gpu_memory_bytes is None or s.peak_gpu_memory_bytes >= 0
    finally:
        proc.kill()
        proc.wait()


def test_monitor_without_a_process_still_samples_the_system():
    with ResourceMonitor(None, interval=0.02) as mon:
        time.sleep(0.1)
    assert mon.summary.peak_rss_bytes is None and mon.summary.num_samples >= 3
    assert mon.summary.mean_system_cpu_percent is not None


def test_find_server_pid_of_a_local_listener():
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if sys.platform.startswith("linux"):
            assert find_server_pid(f"http://127.0.0.1:{port}/v1") == os.getpid()
    assert find_server_pid("http://example.com:8000") is None
