"""A real Prometheus (the OS package's binary) for the e2e tests: started on a free port with
deploy/prometheus.yml pointed at a test server, queried through its HTTP API; and the Grafana
dashboard's expressions with Grafana's variables filled in."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "prometheus.yml"
RATE_WINDOW = "1m"
"""Grafana's $__rate_interval in the tests: the whole test fits in it."""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus:
    def __init__(self, targets: list[str], workdir: Path, scrape_interval: str = "1s") -> None:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())  # the deployed config, retargeted
        config["global"].update(scrape_interval=scrape_interval, evaluation_interval="1s")
        config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
        self.targets = len(targets)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - for its whole life
        self.proc = subprocess.Popen(
            [
                str(prometheus_binary()), f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": at} if at is not None else {})}
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = httpx.get(f"{self.url}/api/v1/query_range", params=params, timeout=30).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def scrapes(self) -> int:
        """Scrapes stored of the least scraped target (0 until every target has one)."""
        result = self.query('count_over_time(up{job="minerva"}[10m])')
        if len(result) < self.targets:
            return 0
        return min(int(float(r["value"][1])) for r in result)

    def wait_samples(self, count: int, timeout: float = 120) -> None:
        """Until ``count`` scrapes of every server are stored (the timeout is a hang guard)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}")
            try:
                ready = httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                ready = False  # not listening yet
            if ready and self.scrapes() >= count:
                return
            assert time.monotonic() < deadline, "prometheus stored no scrapes of the server"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def dashboard_panels() -> list[dict]:
    """The dashboard's graph panels (rows left out)."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")]


def concrete(expr: str) -> str:
    """An expression as Grafana sends it: every instance, the test's rate window."""
    return expr.replace("$instance", ".*").replace("$__rate_interval", RATE_WINDOW)


def finite_values(result: list[dict]) -> list[float]:
    values = [float(s["value"][1]) for s in result]
    return [v for v in values if math.isfinite(v)]
