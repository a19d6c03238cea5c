"""Bench reports carry speculative decoding's acceptance figures (latency and throughput)."""

from __future__ import annotations

from minerva.bench.drivers import load_driver
from minerva.bench.offline import run_latency, run_throughput
from minerva.bench.report import OFFLINE_COLUMNS
from tests.tiny_models import build_tiny_text_model


def test_reports_count_drafts_during_the_measurement(tmp_path):
    path = build_tiny_text_model(tmp_path / "m", seed=5)
    options = {
        "speculative_method": "ngram",
        "num_speculative_tokens": 3,
        "speculative_adaptive": False,
    }
    driver = load_driver("minerva", str(path), device="cpu", dtype="float32", options=options)
    try:
        prompt = [5, 6, 7, 8] * 6
        lat = run_latency(driver, prompt, 24, repeats=2, warmup=1)
        thr = run_throughput(driver, [prompt, prompt[::-1]], [20, 20], warmup=False)
    finally:
        driver.close()
    for row in (lat, thr):
        spec = row["spec_decode"]
        assert spec["draft_tokens"] > 0 and 0 <= spec["accepted_tokens"] <= spec["draft_tokens"]
        assert spec["acceptance_rate"] == spec["accepted_tokens"] / spec["draft_tokens"]
        assert len(spec["acceptance_rate_per_position"]) == 3
        assert spec["mean_accepted_length"] >= 1
    # Only the measured runs count: the warm-up's drafts are not in the latency figures.
    assert lat["spec_decode"]["verify_steps"] <= 2 * 23
    assert ("spec_decode.acceptance_rate", "spec accept", ".2f") in OFFLINE_COLUMNS["latency"]
