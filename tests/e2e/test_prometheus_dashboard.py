"""A real Prometheus scrapes ``minerva serve --models-dir`` (two tiny models) and a small
single-model server set up to reject, preempt and speculate, under a small load; every
expression of the Grafana dashboard returns data through Prometheus's query API and every panel
shows a non-zero value during the load, so the dashboard cannot drift from the metrics and no
panel is a flat line. Needs the ``prometheus`` binary (Debian: ``apt-get install prometheus``;
.ci/run installs it); skipped without it.

MINERVA_DASHBOARD_PNG=docs/monitoring-dashboard.png also draws the panels from that data
(MINERVA_DASHBOARD_LOAD_SCRAPES=90 for a longer load)."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
import yaml

from tests.e2e.conftest import start_server
from tests.e2e.prometheus_runner import (
    COMPOSE_CONFIG,
    PROMETHEUS_CONFIG,
    Prometheus,
    concrete,
    dashboard_panels,
    finite_values,
    prometheus_binary,
)
from tests.e2e.tiny_server_model import MODEL_NAME, build_server_model

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None,
    reason="the prometheus binary is not installed (apt-get install prometheus; .ci/run does)",
)
LOAD_SCRAPES = int(os.environ.get("MINERVA_DASHBOARD_LOAD_SCRAPES", "8"))
"""Scrapes (1 s apart) the load spans: enough samples for every rate() window; the docs'
picture uses more."""


@pytest.mark.parametrize("config", [PROMETHEUS_CONFIG, COMPOSE_CONFIG], ids=["host", "compose"])
def test_deployed_prometheus_configs_are_valid_and_scrape_the_same_job(config):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (it comes with the prometheus package)")
    proc = subprocess.run([promtool, "check", "config", str(config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (job,) = yaml.safe_load(config.read_text())["scrape_configs"]
    assert (job["job_name"], job["metrics_path"]) == ("minerva", "/metrics")  # the dashboard's


STRESS = (
    "--speculative-method", "ngram", "--num-speculative-tokens", "4",  # speculation panel
    "--max-num-seqs", "2", "--max-queued-requests", "1",  # a burst of 6: 503 queue_full
    "--num-kv-blocks", "6", "--max-model-len", "64",  # two 50-token sequences: a preemption
)  # fmt: skip
"""The second server's settings: what the models-dir server's load never triggers."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("alpha", 0), ("beta", 1)):
        (root / name).mkdir()
        build_server_model(root / name, seed=seed)
    alone = build_server_model(tmp_path_factory.mktemp("stress"), seed=2)
    work = tmp_path_factory.mktemp("prometheus")
    # Room for both models (each holds ~0.26 GiB, mostly the activation reserve).
    server = start_server(root, work / "server.log", "--memory-limit", "800MiB", models_dir=root)
    stress = start_server(alone, work / "stress.log", *STRESS)
    prom = Prometheus([f"127.0.0.1:{s.port}" for s in (server, stress)], work)
    yield server, stress, prom
    prom.stop()
    stress.stop()
    server.stop()


def _burst(stress) -> list[int]:
    """Six requests at once on the stress server: two run (and outgrow its KV cache, so one is
    preempted), one waits, the rest are 503s; their statuses."""
    body = {"model": MODEL_NAME, "prompt": "a b c a b c a b c", "max_tokens": 40,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    with ThreadPoolExecutor(6) as pool:
        replies = pool.map(
            lambda _: httpx.post(f"{stress.url}/v1/completions", json=body, timeout=60), range(6)
        )
        return [r.status_code for r in replies]


def _held(server, done: threading.Event) -> None:
    """One long streamed generation on alpha after another until ``done``: the gauges (running
    requests, KV usage) are above 0 at every scrape of the load, however the scrapes fall on a
    busy machine. keep_alive 0 never names alpha, so holding it changes no unload."""
    body = {"model": "alpha", "prompt": "a", "max_tokens": 1500, "ignore_eos": True,
            "stream": True}  # fmt: skip
    while not done.is_set():
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                if done.is_set():
                    break  # closing the stream aborts the request


def _load(server, stress, stop) -> tuple[int, list[int]]:
    """Requests of every kind, at least four rounds and until ``stop()``: chat and generate on
    both models (streaming, concurrent), keep_alive 0 on beta every third round (unload,
    reload), a 404, a burst on the stress server, a long generation held on alpha; how many
    were made, and the bursts' statuses. The fourth round reloads what the third unloaded,
    however few rounds the scrapes took (a slow machine once stopped after three: 2 loads)."""
    client = ollama.Client(host=server.url, timeout=60)
    options = {"num_predict": 12, "temperature": 0}
    made, statuses, done = 0, [], threading.Event()
    with ThreadPoolExecutor(5) as pool:
        held = pool.submit(_held, server, done)
        try:
            for i in itertools.count():
                if i >= 4 and stop():
                    return made, statuses
                burst = pool.submit(_burst, stress)
                jobs = [
                    pool.submit(client.chat, "alpha", [{"role": "user", "content": f"hi {i % 2}"}],
                                options=options, stream=False),
                    pool.submit(lambda: list(client.generate("beta", "Once upon", options=options,
                                                             stream=True))),
                    pool.submit(client.generate, "beta" if i % 3 else "alpha", "a",
                                options=options, keep_alive=0 if i % 3 == 2 else "5m"),  # 2: beta
                ]  # fmt: skip
                for job in jobs:
                    job.result()
                httpx.post(f"{server.url}/api/chat", json={"model": "gamma", "messages": []})
                statuses += burst.result()
                made += len(jobs) + 1
        finally:
            done.set()  # also on a failure: the pool waits for the held stream to end
            held.result()


def test_every_dashboard_expression_returns_data_and_every_panel_moves(stack):
    server, stress, prom = stack
    prom.wait_samples(2)
    start = time.time()
    baseline = prom.scrapes()
    made, statuses = _load(server, stress, lambda: prom.scrapes() >= baseline + LOAD_SCRAPES)
    prom.wait_samples(baseline + LOAD_SCRAPES + 3)  # the load's last samples are stored
    end = time.time()
    assert made > 0 and 200 in statuses and 503 in statuses
    missing, no_value, flat = [], [], []
    for panel in dashboard_panels():
        values, over_load = [], []
        for target in panel["targets"]:
            expr = concrete(target["expr"])
            result = prom.query(expr)
            if not result:
                missing.append(f"{panel['title']}: {target['expr']}")
            values += finite_values(result)
            for series in prom.query_range(expr, start, end, 1.0):
                over_load += [float(v) for _, v in series["values"]]
        if not values:
            no_value.append(panel["title"])
        if not any(math.isfinite(v) and v != 0 for v in over_load):
            flat.append(panel["title"])
    assert missing == [], "expressions without data:\n" + "\n".join(missing)
    assert no_value == [], f"panels with only NaN: {no_value}"
    assert flat == [], f"panels that stayed at 0 (or NaN) through the load: {flat}"
    loads = prom.query("sum(minerva_model_loads_total)")
    assert float(loads[0]["value"][1]) >= 3  # alpha, beta, and reloads after keep_alive 0
    if out := os.environ.get("MINERVA_DASHBOARD_PNG"):
        from tests.e2e.dashboard_render import render_dashboard

        render_dashboard(prom, start, end, Path(out))
