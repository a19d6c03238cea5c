"""A request the engine fails (finish "abort", nothing asked for it) is reported as a failure by
the offline benchmarks, never as a short output: throughput counts it, and consistency says
which engine failed instead of only showing a divergence at token 0. Fake backends stand in
for an engine that fails (as mistral.rs 0.9.5 with ISQ does on batched prompts)."""

from __future__ import annotations

import dataclasses
import json

from minerva.backends.base import CompletionOutput, RequestOutput
from minerva.bench.drivers.backend_driver import BackendDriver
from minerva.bench.offline import run_throughput
from minerva.bench.report import offline_markdown
from minerva.cli import main
from tests.tiny_models import build_tiny_text_model
from tests.unit.test_server_fake_backend import INFO, FakeBackend, FakeStream

FAIL_MARK = 7
"""Prompts that start with this id fail."""


class FailedStream(FakeStream):
    """Two tokens, then the engine gives up: the final output finishes with "abort"."""

    async def __aiter__(self):
        comp = CompletionOutput(index=0, token_ids=[1, 2], text="xy", finish_reason="abort")
        yield RequestOutput(self.request_id, None, self.prompt_ids, [comp], finished=True)


class FailingBackend(FakeBackend):
    """Fails the requests ``fails(prompt_ids)`` picks; serves the rest as FakeBackend does."""

    def __init__(self, fails) -> None:
        super().__init__()
        self.fails = fails

    async def add_request(self, prompt, params, request_id=None, prompt_token_ids=None, *a, **k):
        if isinstance(prompt, list):  # the benchmarks send token ids
            prompt, prompt_token_ids = None, prompt
        stream = await super().add_request(prompt, params, request_id, prompt_token_ids)
        if self.fails(stream.prompt_ids):
            return FailedStream(stream.request_id, stream.prompt_ids, stream.max_tokens)
        return stream

    def model_info(self, digest: bool = True):
        return dataclasses.replace(INFO, device="cpu")


def _driver(monkeypatch, fails) -> BackendDriver:
    monkeypatch.setattr(
        "minerva.bench.drivers.backend_driver.load_backend",
        lambda name, config, **kw: FailingBackend(fails),
    )
    return BackendDriver("minerva", "unused", device="cpu")


def test_throughput_counts_failed_requests_and_not_their_tokens(monkeypatch):
    driver = _driver(monkeypatch, lambda ids: ids[0] == FAIL_MARK)
    prompts = [[FAIL_MARK, 1], [1, 2], [FAIL_MARK, 3], [2, 3]]
    try:
        row = run_throughput(driver, prompts, [8] * 4, warmup=False)
    finally:
        driver.close()
    assert row["failed_requests"] == 2
    assert row["total_output_tokens"] == 8 + 8 + 2 + 2  # the failures' 2 tokens each, no more
    doc = {"benchmark": "throughput", "date": "-", "command": "-", "system": {}, "config": {}}
    table = offline_markdown({**doc, "results": [row]})
    header, _, values = table.split("## Results")[1].strip().splitlines()[:3]
    cells = dict(zip(header.split("|"), values.split("|")))
    assert cells[" failed "].strip() == "2"


def test_consistency_names_the_engine_that_failed(tmp_path, monkeypatch):
    """Two labels of one fake engine (by dtype); the bfloat16 one fails every request."""
    model = build_tiny_text_model(tmp_path / "model")

    def load(name, config, **kw):
        failing = config.model.dtype == "bfloat16"
        return FailingBackend(lambda ids: failing)

    monkeypatch.setattr("minerva.bench.drivers.backend_driver.load_backend", load)
    out = tmp_path / "out"
    args = ["bench", "consistency", "--model", str(model), "--backend", "minerva", "--dtype",
            "float32,bfloat16", "--device", "cpu", "--num-prompts", "3", "--max-tokens", "8",
            "--no-coherence", "--no-plots", "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "results.json").read_text())
    failed = {e["name"]: e["failed_requests"] for e in doc["engines"]}
    assert failed == {"minerva/float32": 0, "minerva/bfloat16": 3}
    (pair,) = doc["results"]
    assert pair["first_divergence"] == 0  # what the pair alone would suggest
    report = (out / "report.md").read_text()
    assert "| failed requests |" in report and "| minerva/bfloat16 | 2.0 | 2 | 3 |" in report
