"""The CPU KV cache is zeros that take resident memory only where written."""

from __future__ import annotations

import gc
import sys

import pytest
import torch

from minerva.runner.kv_cache import KVCacheSpec, allocate_kv_caches

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _spec(dtype: torch.dtype) -> KVCacheSpec:
    return KVCacheSpec(num_layers=2, block_size=16, num_kv_heads=4, head_dim=64, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_cpu_caches_are_zero_contiguous_and_writable(dtype):
    caches = allocate_kv_caches(_spec(dtype), 8, torch.device("cpu"))
    assert len(caches) == 2 and caches[0].data_ptr() != caches[1].data_ptr()
    for cache in caches:
        assert cache.shape == (2, 8, 16, 4, 64) and cache.dtype == dtype
        assert cache.is_contiguous() and not cache.float().any()
    caches[0][1, 3] = 1.0
    assert caches[0].float().sum() == 16 * 4 * 64 and not caches[1].float().any()


@linux_only
def test_cpu_cache_memory_is_resident_only_where_written():
    """128 MiB of cache: resident memory grows with the blocks written, not with the size,
    and returns when the cache is freed."""
    spec = _spec(torch.float32)  # 16 KiB of K or V per block and layer
    gc.collect()
    before = _rss_mib()
    caches = allocate_kv_caches(spec, 2048, torch.device("cpu"))
    assert _rss_mib() - before < 16
    caches[0][:, :1024] = 1.0  # half of layer 0's blocks, K and V: 32 MiB
    grown = _rss_mib() - before
    assert 28 < grown < 48
    del caches
    gc.collect()
    assert _rss_mib() - before < 16
