"""Schema fuzz against the real server (``minerva serve`` over the tiny model): schemathesis
generates bodies from ``/openapi.json``, valid (positive) and schema-violating (negative), for
every route; no answer may be a 5xx or plain text. Bounded and seeded (derandomized), so CI
runs the same few hundred cases every time."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MODEL_NAME, build_server_model
from tests.reliability.input_app import api_shaped, figure

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 12  # per route and mode
FUZZED = [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/embeddings", "POST"),
    ("/api/generate", "POST"), ("/api/chat", "POST"), ("/api/embed", "POST"),
    ("/api/embeddings", "POST"), ("/api/show", "POST"), ("/v1/models/{model_id}", "GET"),
    ("/v1/models", "GET"), ("/api/tags", "GET"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = build_server_model(tmp_path_factory.mktemp("tiny"))
    log = tmp_path_factory.mktemp("logs") / "fuzz.log"
    srv = start_server(folder, log, "--max-model-len", "96", "--max-body-bytes", "256KiB")
    yield srv
    srv.stop()


def test_schema_fuzz_gets_no_5xx_and_no_plain_text(server):
    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    for component in doc["components"]["schemas"].values():  # valid bodies name the served model
        if "model" in component.get("properties", {}):
            component["properties"]["model"] = {"type": "string", "enum": [MODEL_NAME]}
    schema = schemathesis.openapi.from_dict(doc)
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    for path, method in FUZZED:
        for mode in schemathesis.GenerationMode:
            _fuzz(schema[path][method].as_strategy(generation_mode=mode), server.url, path,
                  statuses, bad)  # fmt: skip
    total = sum(statuses.values())
    figure("schema fuzz", f"{total} schemathesis cases on {len(FUZZED)} routes (positive + "
           f"negative), {len(bad)} 5xx or plain-text answers; statuses {dict(statuses)}")  # fmt: skip
    assert not bad, bad[:5]
    assert server.proc.poll() is None


def _fuzz(strategy, url: str, path: str, statuses: Counter, bad: list[str]) -> None:
    """Run EXAMPLES seeded cases of ``strategy``, counting statuses and recording bad answers."""
    from hypothesis import HealthCheck, Phase, given, settings

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=strategy)
    def call(case) -> None:
        response = case.call(base_url=url, timeout=120)
        statuses[response.status_code] += 1
        kind = response.headers.get("content-type", [""])[0]
        ok = response.status_code < 500 and kind.startswith(
            ("application/json", "text/event-stream", "application/x-ndjson")
        )
        if ok and response.status_code >= 400:
            ok = api_shaped(path, _HttpxLike(response))
        if not ok:
            bad.append(f"{case.method} {case.formatted_path} -> {response.status_code} "
                       f"{response.text[:160]!r}")  # fmt: skip

    try:
        call()
    except hypothesis.errors.Unsatisfiable:  # negative mode on a route with no inputs to break
        pass


class _HttpxLike:
    """The two attributes api_shaped reads, from a schemathesis Response."""

    def __init__(self, response) -> None:
        self.headers = {"content-type": response.headers.get("content-type", [""])[0]}
        self._response = response

    def json(self):
        return self._response.json()
