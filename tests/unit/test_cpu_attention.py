"""attention.cpu_backend (C decode and prefill attention, KV write) against the torch
reference."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from minerva.attention import AttentionMetadata, cpu_backend, cpu_prefill, torch_paged
from minerva.ops import native
from minerva.platform import native_kernel_arch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# fp32: the same sums in another order; half: probabilities rounded to the dtype may land one
# ulp apart after a slightly different exp, so the outputs differ by about an ulp.
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (3e-3, 3e-3)}


@pytest.fixture(scope="module")
def backend():
    if not cpu_backend.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail("the attention kernels should build here")
        pytest.skip("no CPU kernels here")
    return cpu_backend


def _step(seq_lens, query_lens, block_size, num_blocks, gen):
    """Metadata of one step: decode rows (query_len 1) first, blocks scattered at random."""
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    perm = torch.randperm(num_blocks - 1, generator=gen) + 1  # block 0 is the null block
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for i, s in enumerate(seq_lens):
        n = -(-s // block_size)
        tables[i, :n] = perm[used : used + n]
        used += n
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    slots = []
    for i, (s, q) in enumerate(zip(seq_lens, query_lens)):
        for p in range(s - q, s):
            slots.append(int(tables[i, p // block_size]) * block_size + p % block_size)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=tables,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        num_decodes=sum(q == 1 for q in query_lens),
        max_query_len=max(query_lens),
        seq_lens_cpu=list(seq_lens),
        query_start_loc_cpu=starts,
    )


CASES = [  # (seq_lens, query_lens, heads, kv_heads, head_dim, window)
    ([130], [1], 9, 3, 64, None),
    ([1, 17, 300, 64], [1, 1, 1, 1], 8, 2, 32, None),
    ([40, 50], [1, 1], 4, 4, 80, 8),
    ([33, 20, 12], [1, 1, 12], 8, 1, 64, None),  # decode rows + a prefill chunk
    ([25, 30], [1, 10], 6, 2, 16, 7),
    ([40, 9, 70], [5, 3, 9], 8, 2, 64, None),  # verify rows only: one C decode row per token
    ([40, 33], [5, 5], 4, 2, 32, 6),  # verify rows under a sliding window
    ([20, 60], [1, 17], 4, 2, 32, None),  # a query past SHORT_QUERY: the torch reference
    # pairs of query heads per KV head: V chunks of 4 vectors, then the 16 dimensions past them
    ([45, 8, 161], [1, 1, 1], 4, 2, 80, None),
    ([37, 70], [1, 1], 6, 2, 20, None),  # a head_dim past whole vectors: the scalar tail
    # prefill chunks in C (cpu_prefill.c): a whole prompt; chunks after a cached prefix under a
    # sliding window, beside decode rows; a head_dim past whole vectors
    ([130], [130], 4, 2, 64, None),
    ([200, 90, 71], [1, 70, 50], 8, 2, 64, 33),
    ([45, 60], [45, 20], 6, 3, 20, None),
]
PREFILL_CASES = [len(CASES) - 3, len(CASES) - 2, len(CASES) - 1]


@pytest.mark.parametrize("verify_rows", [False, True], ids=["plain", "verify_rows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_the_torch_reference(backend, dtype, case, verify_rows):
    ours, ref = _against_reference(backend, case, verify_rows, dtype, dtype, seed=case)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)


def _against_reference(backend, case, verify_rows, q_dtype, kv_dtype, seed):
    """(the backend's attention, the torch reference's) over one random step of CASES[case],
    after checking that both KV writes leave the same cache bits."""
    seq_lens, query_lens, heads, kv_heads, dim, window = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    block_size, num_blocks = 16, 64
    meta = _step(seq_lens, query_lens, block_size, num_blocks, gen)
    meta.verify_rows = verify_rows  # short rows as one C decode row per token
    tokens = sum(query_lens)
    cache = torch.randn(2, num_blocks, block_size, kv_heads, dim, generator=gen).to(kv_dtype)
    qkv = torch.randn(tokens, heads + 2 * kv_heads, dim, generator=gen).to(q_dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    ref_cache = cache.clone()
    with torch.inference_mode():
        backend.write_kv(cache, k, v, meta.slot_mapping)
        torch_paged.write_kv(ref_cache, k, v, meta.slot_mapping)
        assert torch.equal(cache, ref_cache)
        ours = backend.paged_attention(q, cache, meta, dim**-0.5, window)
        ref = torch_paged.paged_attention(q, cache, meta, dim**-0.5, window)
    return ours, ref


@pytest.mark.parametrize("verify_rows", [False, True], ids=["plain", "verify_rows"])
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_float32_model_over_a_16_bit_cache_matches_the_reference(
    backend, kv_dtype, case, verify_rows
):
    # the kernels widen K and V to float32 as the reference does (.to(q.dtype)): float32's
    # tolerance; the KV write rounds each new row as torch's .to(kv_dtype), bit for bit
    assert None not in backend.entries(torch.float32, kv_dtype)  # the C path, not the fallback
    ours, ref = _against_reference(
        backend, case, verify_rows, torch.float32, kv_dtype, seed=100 + case
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_a_cache_pair_without_kernels_uses_the_reference(backend):
    gen = torch.Generator().manual_seed(9)
    meta = _step([20], [1], 16, 8, gen)
    cache = torch.randn(2, 8, 16, 2, 32, generator=gen)  # bf16 model, fp32 cache: no kernel
    q = torch.randn(1, 4, 32, generator=gen).bfloat16()
    assert backend.entries(torch.bfloat16, torch.float32) == (None, None)
    with torch.inference_mode():
        out = backend.paged_attention(q, cache, meta, 0.2, None)
        ref = torch_paged.paged_attention(q, cache, meta, 0.2, None)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kv_dtype", [None, torch.bfloat16], ids=["same", "f32_over_bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_prefill_chunks_take_the_c_kernel(backend, dtype, kv_dtype, monkeypatch):
    """Every prefill chunk of the PREFILL_CASES runs cpu_prefill.c (not the torch reference it
    is compared with)."""
    if kv_dtype is not None and dtype != torch.float32:
        pytest.skip("a 16-bit cache under a float32 model only")
    taken: list[bool] = []
    real = cpu_prefill.attend
    monkeypatch.setattr(cpu_prefill, "attend", lambda *a: taken.append(real(*a)) or taken[-1])
    rtol, atol = TOL[dtype]
    for case in PREFILL_CASES:
        ours, ref = _against_reference(backend, case, False, dtype, kv_dtype or dtype, seed=case)
        torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    assert len(taken) == 5 and all(taken)


def test_contexts_past_max_context_take_the_reference(backend, monkeypatch):
    """A chunk that sees more than MAX_CONTEXT positions runs torch_paged._prefill (the
    flash kernel's blocking wins at long lengths): the reference's bits."""
    monkeypatch.setattr(cpu_prefill, "MAX_CONTEXT", 100)
    ours, ref = _against_reference(
        backend, PREFILL_CASES[0], False, torch.bfloat16, torch.bfloat16, 3
    )
    assert torch.equal(ours, ref)  # 130 positions > 100
    monkeypatch.setattr(cpu_prefill, "MAX_CONTEXT", 130)
    ours, ref = _against_reference(
        backend, PREFILL_CASES[0], False, torch.bfloat16, torch.bfloat16, 3
    )
    assert not torch.equal(ours, ref)  # the kernel's roundings, within the tolerance above


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_query_heads_in_pairs_give_the_bits_of_one_head_at_a_time(backend, dtype):
    """cpu_prefill.c takes the query heads of a KV head two at a time (K and V loaded once for
    the pair); its twin, one head at a time (minerva_prefill_pairs = 0), gives the same bits:
    groups of 2, 3 (a pair and a single head) and 4, head_dims past whole vectors (20, 48)."""
    lib = native.load(cpu_prefill.SOURCE)
    pairs = ctypes.c_int.in_dll(lib, "minerva_prefill_pairs")
    cases = [([130], [130], 4, 2, 64), ([60, 45], [20, 45], 6, 2, 48), ([77], [77], 8, 2, 20)]
    for seq_lens, query_lens, heads, kv_heads, dim in cases:
        gen = torch.Generator().manual_seed(11)
        meta = _step(seq_lens, query_lens, 16, 64, gen)
        cache = torch.randn(2, 64, 16, kv_heads, dim, generator=gen).to(dtype)
        q = torch.randn(sum(query_lens), heads, dim, generator=gen).to(dtype)
        outs = []
        try:
            for flag in (1, 0):
                pairs.value = flag
                with torch.inference_mode():
                    outs.append(backend.paged_attention(q, cache, meta, dim**-0.5, None))
        finally:
            pairs.value = 1
        diff = (outs[0] != outs[1]).nonzero()[:4].tolist()
        assert torch.equal(outs[0], outs[1]), (heads, kv_heads, dim, diff)
