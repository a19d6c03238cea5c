"""An fp8 KV cache on CUDA: the torch reference (the backend fp8 runs on there; Triton refuses
it) writes it saturated and attends over it exactly as over its dequantized values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minerva.attention import torch_paged
from minerva.errors import ConfigError
from minerva.platform import resolve_platform
from minerva.runner.kv_cache import resolve_kv_cache_dtype
from tests.unit.test_cpu_attention import CASES, _step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def _on_cuda(meta):
    moved = {
        f.name: getattr(meta, f.name).cuda()
        for f in dataclasses.fields(meta)
        if isinstance(getattr(meta, f.name), torch.Tensor)
    }
    return dataclasses.replace(meta, **moved)


@pytest.mark.parametrize("cache_dtype", FP8, ids=str)
def test_write_saturates_like_the_cpu(cache_dtype):
    top = torch.finfo(cache_dtype).max
    k = torch.tensor([[[0.3, 2 * top, -1e30, 1e-3]]], dtype=torch.float32)
    caches = [torch.zeros(2, 2, 4, 1, 4, dtype=cache_dtype, device=d) for d in ("cpu", "cuda")]
    for cache in caches:
        torch_paged.write_kv(cache, k.to(cache.device), -k.to(cache.device),
                             torch.tensor([5], device=cache.device))  # fmt: skip
    assert torch.equal(caches[0].float(), caches[1].float().cpu())


@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cache_dtype", FP8, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_torch_attention_over_fp8_equals_attention_over_dequantized(case, cache_dtype, q_dtype):
    seq_lens, query_lens, heads, kv_heads, dim, window = CASES[case]
    gen = torch.Generator().manual_seed(case)
    meta = _on_cuda(_step(seq_lens, query_lens, 16, 64, gen))
    cache = (torch.randn(2, 64, 16, kv_heads, dim, generator=gen) * 3).to(cache_dtype).cuda()
    qkv = torch.randn(sum(query_lens), heads + 2 * kv_heads, dim, generator=gen) * 3
    qkv = qkv.to(q_dtype).cuda()
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    torch_paged.write_kv(cache, k, v, meta.slot_mapping)
    twin = cache.to(q_dtype)
    ours = torch_paged.paged_attention(q, cache, meta, dim**-0.5, window)
    ref = torch_paged.paged_attention(q, twin, meta, dim**-0.5, window)
    assert torch.equal(ours, ref)


def test_triton_backend_refuses_fp8_with_the_fix():
    with pytest.raises(ConfigError, match="attention_backend=torch"):
        resolve_kv_cache_dtype("fp8", torch.bfloat16, resolve_platform("cuda"), "triton")
