"""Benchmark metrics against hand-computed values: percentiles, TPOT/ITL, throughput, goodput."""

from __future__ import annotations

import pytest

from minerva.bench.metrics import (
    RequestRecord,
    distribution,
    meets_slo,
    parse_duration,
    parse_slo,
    summarize,
)
from minerva.errors import ConfigError


def record(i, ttft, chunks, out_tokens, prompt=10, success=True, error=None) -> RequestRecord:
    return RequestRecord(
        "t",
        "c=1",
        0,
        i,
        success=success,
        error=error,
        ttft=ttft,
        e2e=chunks[-1] if chunks else None,
        chunk_times=chunks,
        prompt_tokens=prompt,
        output_tokens=out_tokens,
        usage_reported=True,
    )


def test_distribution_matches_hand_computed_percentiles():
    # 1..10 seconds: linear interpolation puts p50 at rank 4.5 -> 5.5, p90 at 8.1 -> 9.1,
    # p99 at 8.91 -> 9.91; mean 5.5; population std sqrt(8.25).
    d = distribution([float(v) for v in range(1, 11)], scale=1.0)
    assert d["median"] == pytest.approx(5.5)
    assert d["p90"] == pytest.approx(9.1)
    assert d["p99"] == pytest.approx(9.91)
    assert d["mean"] == pytest.approx(5.5)
    assert d["std"] == pytest.approx(8.25**0.5)
    assert (d["min"], d["max"]) == (1.0, 10.0)
    assert distribution([0.002])["median"] == pytest.approx(2.0)  # seconds -> ms by default
    assert distribution([])["p99"] is None


def test_itl_and_tpot_of_one_request():
    # First text at 0.1 s, then 0.12, 0.15, 0.19; 4 tokens in 4 chunks.
    r = record(0, 0.1, [0.1, 0.12, 0.15, 0.19], 4)
    assert r.itl == pytest.approx([0.02, 0.03, 0.04])
    assert r.tpot == pytest.approx((0.19 - 0.1) / 3)
    # With 7 tokens in the same 4 chunks, TPOT counts tokens, ITL counts chunks.
    assert record(0, 0.1, [0.1, 0.12, 0.15, 0.19], 7).tpot == pytest.approx(0.09 / 6)
    assert record(0, 0.1, [0.1], 1).tpot is None  # no decode phase
    assert record(0, None, [], 0, success=False, error="x").tpot is None


def test_summarize_throughput_failures_and_goodput():
    records = [
        record(0, 0.10, [0.10, 0.20, 0.30], 3),  # tpot 0.1
        record(1, 0.30, [0.30, 0.35, 0.40], 3),  # tpot 0.05
        record(2, 0.05, [0.05, 0.06], 2, prompt=20),  # tpot 0.01
        record(3, None, [], 0, success=False, error="HTTP 500: boom"),
        record(4, None, [], 0, success=False, error="HTTP 500: boom"),
        record(5, None, [], 0, success=False, error="timeout"),
    ]
    s = summarize(records, duration=2.0, slo={"ttft": 0.2, "tpot": 0.06})
    assert (s["num_requests"], s["completed"], s["failed"]) == (6, 3, 3)
    assert s["failure_reasons"] == {"HTTP 500: boom": 2, "timeout": 1}
    assert s["total_output_tokens"] == 8 and s["total_input_tokens"] == 40
    assert s["output_throughput"] == pytest.approx(4.0)
    assert s["total_token_throughput"] == pytest.approx(24.0)
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["ttft_ms"]["median"] == pytest.approx(100.0)
    assert s["tpot_ms"]["mean"] == pytest.approx((100 + 50 + 10) / 3)
    # ITLs pooled over requests: 100, 100, 50, 50, 10 ms.
    assert s["itl_ms"]["median"] == pytest.approx(50.0)
    assert s["e2e_ms"]["max"] == pytest.approx(400.0)
    # Only request 2 meets both SLOs (0 has TPOT 0.1 > 0.06, 1 has TTFT 0.3 > 0.2).
    assert s["goodput"] == pytest.approx(0.5)
    assert s["goodput_fraction"] == pytest.approx(1 / 6)
    assert s["slo"] == {"ttft": pytest.approx(200.0), "tpot": pytest.approx(60.0)}


def test_meets_slo_bounds_are_inclusive_and_failures_never_meet():
    r = record(0, 0.2, [0.2, 0.3], 2)
    assert meets_slo(r, {"ttft": 0.2, "e2e": 0.3})
    assert not meets_slo(r, {"e2e": 0.29})
    assert not meets_slo(record(1, None, [], 0, success=False), {})


@pytest.mark.parametrize(
    "text, seconds",
    [("200ms", 0.2), ("1.5s", 1.5), ("800us", 0.0008), ("50", 0.05), (" 2 s ", 2.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_slo_and_its_errors():
    assert parse_slo("ttft=200ms,tpot=50ms,e2el=10s") == pytest.approx(
        {"ttft": 0.2, "tpot": 0.05, "e2e": 10.0}
    )
    assert parse_slo(None) == {}
    with pytest.raises(ConfigError, match="metric one of ttft, tpot, e2e"):
        parse_slo("latency=3s")
    with pytest.raises(ConfigError, match="not a duration"):
        parse_slo("ttft=fast")
