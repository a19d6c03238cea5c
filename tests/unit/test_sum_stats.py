"""Several loaded models' BackendStats as one for /metrics, against sums done by hand."""

from __future__ import annotations

from minerva.backends.base import BackendStats
from minerva.server.metrics import sum_stats


def test_counts_add_kv_usage_is_over_all_blocks_memory_is_the_process_figure():
    a = BackendStats(num_running=2, num_waiting=1, kv_cache_usage=0.5, num_kv_blocks=100,
                     prefix_cache_hits=7, device_memory_used=10, device_memory_total=99,
                     model_memory_bytes=3, spec_drafts_per_position=[4, 2])  # fmt: skip
    b = BackendStats(num_running=1, kv_cache_usage=0.1, num_kv_blocks=300, prefix_cache_hits=1,
                     device_memory_used=12, device_memory_total=99, model_memory_bytes=5,
                     spec_drafts_per_position=[1])  # fmt: skip
    s = sum_stats([a, b])
    assert (s.num_running, s.num_waiting, s.prefix_cache_hits) == (3, 1, 8)
    assert s.num_kv_blocks == 400 and s.kv_cache_usage == (50 + 30) / 400
    assert (s.device_memory_used, s.device_memory_total) == (12, 99)
    assert s.model_memory_bytes == 8 and s.spec_drafts_per_position == [5, 2]
    assert sum_stats([a]) is a
    assert sum_stats([]) == BackendStats()  # nothing loaded: zeros
