"""The resource monitor: RSS and CPU of another process, and finding a local server's PID.

No wall-clock thresholds: the child burns a fixed amount of its own CPU time between two
samples that the test takes in order, and the sampling loop is checked by counting samples."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import psutil

from minerva.bench.monitor import ResourceMonitor, find_server_pid

CHILD = """
import sys, time
data = b"x" * (160 * 2**20)  # written, so resident
print("ready", flush=True)
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass  # 0.3 s of this process's CPU time, however long that takes on the clock
print("done", flush=True)
sys.stdin.readline()
"""


def test_monitor_sees_another_process_memory_and_cpu():
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        # A long interval: the only samples are the start's and the stop's, around the burn.
        with ResourceMonitor(proc.pid, interval=3600) as mon:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
        s = mon.summary
        assert s.num_samples == 2
        first, last = s.samples
        assert 160 * 2**20 < s.peak_rss_bytes < 400 * 2**20
        assert s.mean_rss_bytes <= s.peak_rss_bytes
        # The CPU percent between the two samples, times their distance, is the child's CPU
        # time in between: at least the 0.3 s it burned (less a 10 ms clock tick or two).
        # Sampling this process instead would show ~0 (it waited on a pipe).
        cpu_seconds = last.cpu_percent / 100 * (last.t - first.t)
        assert cpu_seconds >= 0.28
        assert cpu_seconds <= sum(psutil.Process(proc.pid).cpu_times()[:2]) + 0.02
        assert 0 <= s.mean_system_cpu_percent <= 100
        assert s.peak_gpu_memory_bytes is None or s.peak_gpu_memory_bytes >= 0
    finally:
        proc.kill()
        proc.wait()


def test_monitor_without_a_process_still_samples_the_system():
    with ResourceMonitor(None, interval=0.01) as mon:
        deadline = time.monotonic() + 60  # a hang guard, not a speed check
        while mon.num_samples < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mon.num_samples >= 3  # the start's sample and two from the loop
    assert mon.summary.peak_rss_bytes is None and mon.summary.num_samples >= 4
    assert 0 <= mon.summary.mean_system_cpu_percent <= 100


def test_find_server_pid_of_a_local_listener():
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if sys.platform.startswith("linux"):
            assert find_server_pid(f"http://127.0.0.1:{port}/v1") == os.getpid()
    assert find_server_pid("http://example.com:8000") is None
