"""End-to-end fixtures: ``minerva serve`` as a real subprocess on a free loopback port, over
the tiny random model of tiny_server_model.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.tiny_server_model import MODEL_NAME, build_server_model
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
DEMO_NAME = "minerva-demo"


@dataclass
class Server:
    """A running ``minerva serve`` subprocess."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(
            **{"base_url": self.url, "headers": self.headers, "timeout": 60, **kwargs}
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics by 'name{labels}' (parsed with prometheus_client's parser)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def wait_idle(self, timeout: float = 60.0) -> dict[str, float]:
        """Poll /metrics until nothing runs or waits and no KV block is held (the timeout is a
        hang guard, not a speed check)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            idle = (
                m["minerva_requests_running"] == 0
                and m["minerva_requests_waiting"] == 0
                and m["minerva_kv_cache_usage_ratio"] == 0
            )
            if idle or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    model_dir: Path,
    log_path: Path,
    *args: str,
    api_key: str | None = None,
    served_name: str = MODEL_NAME,
    models_dir: Path | None = None,
) -> Server:
    """Start ``minerva serve`` on a free port and wait until /health says ok (``models_dir``:
    serve that folder's models instead of ``model_dir``)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    env.pop("MINERVA_API_KEY", None)
    if api_key is not None:
        env["MINERVA_API_KEY"] = api_key
    model = ["--model", str(model_dir), "--served-model-name", served_name]
    if models_dir is not None:
        model = ["--models-dir", str(models_dir)]
    cmd = [
        sys.executable, "-m", "minerva.cli", "serve", *model, "--port", str(port), "--device", "cpu",
        "--dtype", "float32", "--num-threads", "1", "--num-kv-blocks", "1024",
        "--no-access-log", *args,
    ]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115 - the server writes it for its whole life
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = Server(proc, port, log_path, api_key)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"minerva serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"minerva serve did not become healthy:\n{server.log()}")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_server_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    """The shared server: API key required, default engine settings, prefix caching on."""
    srv = start_server(
        model_dir, tmp_path_factory.mktemp("logs") / "main.log", "--max-body-bytes", "64KiB",
        api_key=API_KEY,
    )  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """A server over the bundled demo model (trained weights, its generation defaults)."""
    from minerva.demo import demo_model_path

    log = tmp_path_factory.mktemp("logs") / "demo.log"
    srv = start_server(demo_model_path(), log, served_name=DEMO_NAME)
    yield srv
    srv.stop()
