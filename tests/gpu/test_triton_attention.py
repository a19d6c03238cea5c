"""Triton paged-attention kernels against the torch reference (skipped without CUDA and triton).

Errors are ||out - ref|| / ||ref|| against the reference run on float32 copies of the inputs;
bounds per the device METHOD.md (bf16 operands 1e-3..1e-2, fp16 tighter, fp32 far under 1e-3).
Outputs are poisoned with NaN first, so an unwritten element fails the check.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from minerva.attention import AttentionMetadata, torch_paged

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
triton = pytest.importorskip("triton")

from minerva.attention.triton_backend import (  # noqa: E402
    DECODE_SPLITS_KEY,
    TritonAttention,
    triton_available,
)
from minerva.attention.triton_decode import (  # noqa: E402
    MAX_SPLITS,
    choose_num_splits,
    decode_attention,
)
from minerva.attention.triton_kv_write import write_kv  # noqa: E402
from minerva.attention.triton_prefill import prefill_attention  # noqa: E402

DEVICE = "cuda"
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# (dtype, head_dim, num_kv_heads, GQA group, block_size)
CASES = [
    (BF16, 128, 8, 4, 16),
    (BF16, 128, 2, 8, 32),
    (BF16, 64, 4, 1, 16),
    (BF16, 128, 1, 8, 128),
    (FP16, 128, 4, 4, 16),
    (FP16, 64, 2, 8, 32),
    (FP32, 128, 2, 4, 16),
    (FP32, 64, 4, 1, 32),
]
CASE_IDS = [f"{str(c[0])[6:]}-d{c[1]}-kv{c[2]}-g{c[3]}-bs{c[4]}" for c in CASES]
# Context lengths: 1, odd, exact block boundaries and one past them, several tiles.
DECODE_LENS = [1, 7, 16, 17, 31, 32, 33, 64, 100, 129, 511, 1000]


def make_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_decodes: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    gen: torch.Generator,
) -> tuple[torch.Tensor, AttentionMetadata]:
    """A random KV cache and the metadata of one step. Every sequence owns random, scattered
    blocks (block 0 is the null block); every cache element, unused ones included, is random."""
    need = [-(-max(s, 1) // block_size) for s in seq_lens]
    num_blocks = 1 + sum(need) + 3
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    max_blocks = max(need)
    tables, slots, start = [], [], 0
    for q_len, s_len, n in zip(query_lens, seq_lens, need):
        blocks = perm[start : start + n]
        start += n
        tables.append(blocks + [0] * (max_blocks - n))
        if s_len == 0:  # a padding row
            slots.append(-1)
        for pos in range(max(s_len - q_len, 0), s_len):
            slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    kv_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    qsl = [0]
    for q_len in query_lens:
        qsl.append(qsl[-1] + q_len)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=DEVICE),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        num_decodes=num_decodes,
        max_query_len=max(query_lens),
        seq_lens_cpu=list(seq_lens),
        query_start_loc_cpu=qsl,
    )
    return kv_cache, meta


def seed(*key) -> torch.Generator:
    """A generator seeded from the test's parameters: fresh inputs per case, reproducible."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def rand(shape, dtype, gen, mult: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * mult).to(DEVICE, dtype)


def reference(q, kv_cache, meta, scale, window) -> torch.Tensor:
    """The torch reference on float32 copies (its own extras, so no plan is shared)."""
    ref_meta = AttentionMetadata(**{**meta.__dict__, "extras": {}})
    return torch_paged.paged_attention(q.float(), kv_cache.float(), ref_meta, scale, window)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert torch.isfinite(out).all(), "NaN/inf or an unwritten (poisoned) element"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"relative error {err:.2e} >= {TOL[dtype]:.0e}"


def test_triton_available():
    assert triton_available()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("window", [None, 20])
def test_decode_matches_reference(case, num_splits, window):
    dtype, head_dim, kvh, group, block_size = case
    gen = seed(case, num_splits, window)
    n = len(DECODE_LENS)
    kv_cache, meta = make_batch([1] * n, DECODE_LENS, n, block_size, kvh, head_dim, dtype, gen)
    q = rand((n, kvh * group, head_dim), dtype, gen, mult=2.0)
    scale = head_dim**-0.5
    out = torch.full_like(q, float("nan"))
    decode_attention(
        q, kv_cache, meta.block_tables, meta.seq_lens, scale, window, num_splits, out=out
    )
    check(out, reference(q, kv_cache, meta, scale, window), dtype)


@pytest.mark.parametrize("dtype", [BF16, FP32])
@pytest.mark.parametrize("window", [None, 1000, 10000])
def test_decode_long_context_split_k(dtype, window):
    lens = [8192, 8000, 4097, 3]
    gen = torch.Generator().manual_seed(7)
    kv_cache, meta = make_batch([1] * 4, lens, 4, 16, 2, 128, dtype, gen)
    q = rand((4, 8, 128), dtype, gen, mult=2.0)
    splits = choose_num_splits(4, 2, max(lens), 132)
    assert splits > 1
    out = torch.full_like(q, float("nan"))
    decode_attention(
        q, kv_cache, meta.block_tables, meta.seq_lens, 128**-0.5, window, splits, out=out
    )
    ref = reference(q, kv_cache, meta, 128**-0.5, window)
    check(out, ref, dtype)
    for i in range(4):  # per sequence too: the short one must not hide in the long ones' norm
        check(out[i], ref[i], dtype)


def test_decode_large_batch_matches_reference():
    """Enough (sequence, KV head) programs for the deeper-pipelined tile config."""
    gen = seed("large-batch")
    lens = torch.randint(1, 300, (64,), generator=gen).tolist()
    kv_cache, meta = make_batch([1] * 64, lens, 64, 16, 8, 128, BF16, gen)
    q = rand((64, 32, 128), BF16, gen, mult=2.0)
    assert choose_num_splits(64, 8, max(lens), 132) == 1
    out = torch.full_like(q, float("nan"))
    decode_attention(q, kv_cache, meta.block_tables, meta.seq_lens, 128**-0.5, None, 1, out=out)
    check(out, reference(q, kv_cache, meta, 128**-0.5, None), BF16)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_padded_rows_output_zeros(num_splits):
    gen = torch.Generator().manual_seed(3)
    lens = [5, 0, 300, 0]
    kv_cache, meta = make_batch([1] * 4, lens, 4, 16, 2, 64, BF16, gen)
    q = rand((4, 8, 64), BF16, gen)
    out = torch.full_like(q, float("nan"))
    decode_attention(
        q, kv_cache, meta.block_tables, meta.seq_lens, 0.125, None, num_splits, out=out
    )
    assert (out[1] == 0).all() and (out[3] == 0).all()
    real = [0, 2]
    sub = AttentionMetadata(
        slot_mapping=meta.slot_mapping[:0],
        block_tables=meta.block_tables[real],
        seq_lens=meta.seq_lens[real],
        query_start_loc=torch.arange(3, dtype=torch.int32, device=DEVICE),
        num_decodes=2,
        max_query_len=1,
        seq_lens_cpu=[5, 300],
        query_start_loc_cpu=[0, 1, 2],
    )
    check(out[real], reference(q[real], kv_cache, sub, 0.125, None), BF16)


def test_decode_cuda_graph_replays_with_new_lengths():
    """Captured once; new lengths, tables and queries copied into the static inputs replay right."""
    gen = torch.Generator().manual_seed(11)
    lens_b = [700, 33, 1024, 1]
    kv_cache, meta_b = make_batch([1] * 4, lens_b, 4, 16, 8, 128, BF16, gen)
    q_b = rand((4, 32, 128), BF16, gen)
    q = torch.zeros_like(q_b)
    tables = torch.zeros_like(meta_b.block_tables)
    seq_lens = torch.tensor([10, 200, 50, 1], dtype=torch.int32, device=DEVICE)
    tables[:, :13] = meta_b.block_tables[:, :13]  # lengths A use a prefix of B's tables
    q.normal_()
    splits = choose_num_splits(4, 8, 1024, 132)
    assert splits > 1
    out = torch.empty_like(q)

    def step():
        decode_attention(q, kv_cache, tables, seq_lens, 128**-0.5, None, splits, out=out)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile + warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    q.copy_(q_b)
    tables.copy_(meta_b.block_tables)
    seq_lens.copy_(meta_b.seq_lens)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    check(out, reference(q_b, kv_cache, meta_b, 128**-0.5, None), BF16)


# (query_len, seq_len): fresh prompts, chunks after a cached prefix, block-boundary lengths.
PREFILL_ROWS = [(1, 1), (17, 17), (64, 64), (100, 100), (33, 80), (16, 48), (130, 300), (5, 261)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("window", [None, 7, 40])
def test_prefill_matches_reference(case, window):
    dtype, head_dim, kvh, group, block_size = case
    gen = seed(case, window)
    q_lens, s_lens = [r[0] for r in PREFILL_ROWS], [r[1] for r in PREFILL_ROWS]
    kv_cache, meta = make_batch(q_lens, s_lens, 0, block_size, kvh, head_dim, dtype, gen)
    q = rand((sum(q_lens), kvh * group, head_dim), dtype, gen, mult=2.0)
    scale = head_dim**-0.5
    out = torch.full_like(q, float("nan"))
    prefill_attention(
        q,
        kv_cache,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        0,
        len(q_lens),
        max(q_lens),
        scale,
        window,
        out=out,
    )
    ref = reference(q, kv_cache, meta, scale, window)
    check(out, ref, dtype)
    starts = meta.query_start_loc_cpu
    for i in range(len(q_lens)):  # every sequence on its own
        check(out[starts[i] : starts[i + 1]], ref[starts[i] : starts[i + 1]], dtype)


@pytest.mark.parametrize("dtype", [BF16, FP32])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_write_kv_matches_reference_and_skips_padding(dtype, block_size, head_dim):
    gen = torch.Generator().manual_seed(5)
    kvh, num_blocks, num_tokens = 8, 40, 50
    cache = rand((2, num_blocks, block_size, kvh, head_dim), dtype, gen)
    # k, v are strided slices of a fused qkv, as in the model.
    qkv = rand((num_tokens, 32 + 2 * kvh, head_dim), dtype, gen)
    k, v = qkv[:, 32 : 32 + kvh], qkv[:, 32 + kvh :]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[3, 17, 49]] = -1
    slots = slots.to(DEVICE)
    expected = cache.clone()
    keep = slots >= 0
    torch_paged.write_kv(expected, k[keep], v[keep], slots[keep])
    write_kv(cache, k, v, slots)
    torch.testing.assert_close(cache, expected, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [BF16, FP32])
@pytest.mark.parametrize("window", [None, 24])
@pytest.mark.parametrize("forced_splits", [None, 8])
def test_backend_mixed_batch_matches_reference(dtype, window, forced_splits):
    """Decodes then prefill chunks with prefix context, through write_kv + paged_attention."""
    gen = seed(dtype, window, forced_splits)
    rows = [(1, 40), (1, 1), (1, 300), (1, 16), (20, 20), (7, 100), (64, 128), (3, 3)]
    q_lens, s_lens = [r[0] for r in rows], [r[1] for r in rows]
    kvh, group, head_dim = 8, 4, 128
    cache, meta = make_batch(q_lens, s_lens, 4, 16, kvh, head_dim, dtype, gen)
    num_tokens = sum(q_lens)
    q = rand((num_tokens, kvh * group, head_dim), dtype, gen)
    k, v = (
        rand((num_tokens, kvh, head_dim), dtype, gen),
        rand((num_tokens, kvh, head_dim), dtype, gen),
    )
    scale = head_dim**-0.5

    ref_cache = cache.clone()
    torch_paged.write_kv(ref_cache, k, v, meta.slot_mapping)
    ref = reference(q, ref_cache, meta, scale, window)

    attn = TritonAttention(num_sms=132)
    if forced_splits:
        meta.extras[DECODE_SPLITS_KEY] = forced_splits
    attn.write_kv(cache, k, v, meta.slot_mapping)
    torch.testing.assert_close(cache, ref_cache, atol=0, rtol=0)
    out = attn.paged_attention(q, cache, meta, scale, window)
    check(out, ref, dtype)
    check(out[:4], ref[:4], dtype)
    check(out[4:], ref[4:], dtype)


def test_choose_num_splits():
    assert choose_num_splits(1, 8, 4096, 132) == 16  # 8 programs: split to fill the GPU
    assert choose_num_splits(8, 8, 1024, 132) == 4  # capped by >= 256 tokens per split
    assert choose_num_splits(8, 8, 4096, 132) == 8  # towards four programs per SM
    assert choose_num_splits(64, 8, 4096, 132) == 1  # 512 programs already fill it
    assert choose_num_splits(1, 8, 100, 132) == 1  # short context: one split
    for n in (1, 2, 3, 5, 8):
        s = choose_num_splits(n, 1, 1 << 20, 132)
        assert s == 1 << int(math.log2(s)) and s <= MAX_SPLITS
