"""Speculative decoding counters reach /metrics: drafts, accepted, per position, mean length."""

from __future__ import annotations

from types import SimpleNamespace

from minerva.backends.base import BackendStats
from minerva.server.metrics import ServerMetrics


def test_spec_decode_metrics_are_exported():
    stats = BackendStats(
        spec_verify_steps=4,
        spec_draft_tokens=10,
        spec_accepted_tokens=6,
        spec_emitted_tokens=10,
        spec_drafts_per_position=[4, 3, 3],
        spec_accepted_per_position=[3, 2, 1],
    )
    metrics = ServerMetrics()
    metrics.attach(SimpleNamespace(stats=lambda: stats))
    text = metrics.render().decode()
    lines = set(text.splitlines())
    assert "minerva_spec_decode_draft_tokens_total 10.0" in lines
    assert "minerva_spec_decode_accepted_tokens_total 6.0" in lines
    assert "minerva_spec_decode_acceptance_ratio 0.6" in lines
    assert "minerva_spec_decode_mean_accepted_length 2.5" in lines
    assert 'minerva_spec_decode_accepted_tokens_per_position_total{position="2"} 1.0' in lines
    assert 'minerva_spec_decode_draft_tokens_per_position_total{position="0"} 4.0' in lines


def test_no_speculation_reads_zero():
    stats = BackendStats()
    assert stats.spec_acceptance_rate == 0.0 and stats.spec_mean_accepted_length == 0.0
