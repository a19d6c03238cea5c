"""A real Prometheus scrapes ``minerva serve --models-dir`` (two tiny models) under a small load,
and every expression of the Grafana dashboard returns data through Prometheus's query API, so
the dashboard cannot drift from the metrics. Needs the ``prometheus`` binary (Debian:
``apt-get install prometheus``; .ci/run installs it); skipped without it.

MINERVA_DASHBOARD_PNG=docs/monitoring-dashboard.png also draws the panels from that data
(MINERVA_DASHBOARD_LOAD_SCRAPES=90 for a longer load)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.prometheus_runner import (
    PROMETHEUS_CONFIG,
    Prometheus,
    concrete,
    dashboard_panels,
    finite_values,
    prometheus_binary,
)
from tests.e2e.tiny_server_model import build_server_model

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None,
    reason="the prometheus binary is not installed (apt-get install prometheus; .ci/run does)",
)
LOAD_SCRAPES = int(os.environ.get("MINERVA_DASHBOARD_LOAD_SCRAPES", "8"))
"""Scrapes (1 s apart) the load spans: enough samples for every rate() window; the docs'
picture uses more."""


def test_deployed_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (it comes with the prometheus package)")
    proc = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("alpha", 0), ("beta", 1)):
        (root / name).mkdir()
        build_server_model(root / name, seed=seed)
    work = tmp_path_factory.mktemp("prometheus")
    # Room for both models (each holds ~0.26 GiB, mostly the activation reserve).
    server = start_server(root, work / "server.log", "--memory-limit", "800MiB", models_dir=root)
    prom = Prometheus(f"127.0.0.1:{server.port}", work)
    yield server, prom
    prom.stop()
    server.stop()


def _load(server, stop) -> int:
    """Requests of every kind, at least four rounds and until ``stop()``: chat and generate on
    both models (streaming, concurrent), keep_alive 0 every third round (unload, reload), a
    404; how many were made. The fourth round reloads what the third unloaded, however few
    rounds the scrapes took (a slow machine once stopped after three: 2 loads)."""
    client = ollama.Client(host=server.url, timeout=60)
    options = {"num_predict": 12, "temperature": 0}
    made = 0
    with ThreadPoolExecutor(3) as pool:
        for i in itertools.count():
            if i >= 4 and stop():
                return made
            jobs = [
                pool.submit(client.chat, "alpha", [{"role": "user", "content": f"hi {i % 2}"}],
                            options=options, stream=False),
                pool.submit(lambda: list(client.generate("beta", "Once upon", options=options,
                                                         stream=True))),
                pool.submit(client.generate, "beta" if i % 3 else "alpha", "a",
                            options=options, keep_alive=0 if i % 3 == 2 else "5m"),
            ]  # fmt: skip
            for job in jobs:
                job.result()
            httpx.post(f"{server.url}/api/chat", json={"model": "gamma", "messages": []})
            made += len(jobs) + 1


def test_every_dashboard_expression_returns_data(stack):
    server, prom = stack
    prom.wait_samples(2)
    start = time.time()
    baseline = _scrapes(prom)
    made = _load(server, lambda: _scrapes(prom) >= baseline + LOAD_SCRAPES)
    prom.wait_samples(baseline + LOAD_SCRAPES + 3)  # the load's last samples are stored
    assert made > 0
    missing, no_value = [], []
    for panel in dashboard_panels():
        values = []
        for target in panel["targets"]:
            result = prom.query(concrete(target["expr"]))
            if not result:
                missing.append(f"{panel['title']}: {target['expr']}")
            values += finite_values(result)
        if not values:
            no_value.append(panel["title"])
    assert missing == [], "expressions without data:\n" + "\n".join(missing)
    assert no_value == [], f"panels with only NaN: {no_value}"
    loads = prom.query("sum(minerva_model_loads_total)")
    assert float(loads[0]["value"][1]) >= 3  # alpha, beta, and reloads after keep_alive 0
    if out := os.environ.get("MINERVA_DASHBOARD_PNG"):
        from tests.e2e.dashboard_render import render_dashboard

        render_dashboard(prom, start, time.time(), Path(out))


def _scrapes(prom: Prometheus) -> int:
    result = prom.query('count_over_time(up{job="minerva"}[10m])')
    return int(float(result[0]["value"][1])) if result else 0
