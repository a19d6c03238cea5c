"""Fused Triton glue kernels against their torch twins (CUDA only)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture(params=[torch.float32, torch.bfloat16, torch.float16], ids=str)
def dtype(request):
    return request.param


@pytest.mark.parametrize("rows, hidden", [(1, 64), (7, 576), (33, 4096), (5, 2050)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(dtype, rows, hidden, with_residual):
    from minerva.models.layers import RMSNorm
    from minerva.ops.triton_ops import add_rms_norm

    torch.manual_seed(0)
    norm = RMSNorm(hidden, 1e-5, dtype).cuda()
    norm.weight.data.normal_(1.0, 0.1)
    x = torch.randn(rows, hidden, dtype=dtype, device="cuda") * 3
    res = torch.randn(rows, hidden, dtype=dtype, device="cuda") if with_residual else None
    out, new_res = add_rms_norm(x, res, norm.weight, 1e-5)
    if with_residual:
        ref, ref_res = norm(x, res)
        torch.testing.assert_close(new_res, ref_res, atol=0, rtol=0)
    else:
        ref = norm(x)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("rows, inter", [(1, 128), (9, 1536), (64, 14336), (3, 1000)])
def test_silu_and_mul(dtype, rows, inter):
    from minerva.ops.triton_ops import silu_and_mul

    x = torch.randn(rows, 2 * inter, dtype=dtype, device="cuda") * 4
    gate, up = x.split(inter, dim=-1)
    ref = F.silu(gate) * up
    torch.testing.assert_close(
        silu_and_mul(x).float(), ref.float(), atol=TOL[dtype] * 4, rtol=TOL[dtype]
    )


@pytest.mark.parametrize("tokens, heads, head_dim", [(1, 40, 128), (17, 12, 64), (300, 3, 32)])
def test_rope_matches_torch_on_strided_q_k(dtype, tokens, heads, head_dim):
    from minerva.models.rope import fold_sin, rope_cos_sin
    from minerva.ops import triton_ops
    from minerva.ops.torch_ops import apply_rope

    cos, sin = rope_cos_sin(head_dim, 10000.0, None, 4096, 4096)
    pos = torch.randint(0, 4096, (tokens,))
    cos = cos[pos].to("cuda", dtype).unsqueeze(1)
    sin = fold_sin(sin)[pos].to("cuda", dtype).unsqueeze(1)
    qkv = torch.randn(tokens, heads + 8, head_dim, dtype=dtype, device="cuda")
    x = qkv[:, :heads]  # a strided view, as in the model
    ref = apply_rope(x, cos, sin)
    out = triton_ops.apply_rope(x, cos, sin)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype] * 4, rtol=TOL[dtype])


@pytest.mark.parametrize("n, k", [(1, 64), (1000, 777), (4096, 4096), (32000, 2048)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_float64_reference(dtype, n, k, with_bias):
    """The batch-1 linear layer (tails in N and K included) against float64, and the dispatch:
    one row through the GEMV, more rows through F.linear."""
    from minerva.ops.triton_gemv import gemv
    from minerva.ops.triton_ops import linear

    torch.manual_seed(0)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    b = torch.randn(n, device="cuda", dtype=dtype) if with_bias else None
    ref = x.double() @ w.double().t() + (b.double() if with_bias else 0)
    out = gemv(x, w, b)
    assert out.shape == (1, n) and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype] * 4, rtol=TOL[dtype])
    assert torch.equal(linear(x, w, b), out)
    x3 = torch.randn(3, k, device="cuda", dtype=dtype)
    assert torch.equal(linear(x3, w, b), F.linear(x3, w, b))


@pytest.mark.parametrize("n, k", [(64, 64), (1000, 776), (4096, 4096)])
def test_gemv_residual_epilogue_and_norm_prologue_match_torch(dtype, n, k):
    """gemv_add_residual = residual + linear (and the sum of squares it leaves behind);
    gemv_rms_norm = RMSNorm then linear, with the same roundings as the layered path."""
    from minerva.models.layers import RMSNorm
    from minerva.ops.triton_gemv import gemv_add_residual, gemv_rms_norm

    torch.manual_seed(0)
    w1 = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    b1 = torch.randn(n, device="cuda", dtype=dtype)
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    residual = torch.randn(1, n, device="cuda", dtype=dtype)
    h, partials = gemv_add_residual(x, w1, b1, residual)
    ref_h = F.linear(x, w1, b1) + residual
    torch.testing.assert_close(h.float(), ref_h.float(), atol=TOL[dtype] * 8, rtol=TOL[dtype])
    ss = partials.sum()
    torch.testing.assert_close(ss, (h.float() ** 2).sum(), rtol=1e-5, atol=0)

    norm = RMSNorm(n, 1e-5, dtype).cuda()
    norm.weight.data.normal_(1.0, 0.1)
    w2 = torch.randn(257, n, device="cuda", dtype=dtype) / n**0.5
    out = gemv_rms_norm(h, partials, norm.weight, norm.eps, w2)
    ref = F.linear(norm(h), w2)
    torch.testing.assert_close(out.float(), ref.float(), atol=TOL[dtype] * 8, rtol=TOL[dtype] * 2)


@pytest.mark.parametrize("tokens, heads, kv_heads, head_dim", [(1, 32, 4, 64), (19, 12, 3, 128)])
def test_rope_write_kv_equals_rope_then_write_kv(dtype, tokens, heads, kv_heads, head_dim):
    """The fused RoPE + KV-cache write against the two kernels it replaces (exactly: same
    arithmetic) and the torch reference; padding slots (-1) leave the cache alone."""
    from minerva.attention import torch_paged
    from minerva.attention.triton_kv_write import rope_write_kv
    from minerva.models.rope import fold_sin, rope_cos_sin
    from minerva.ops import triton_ops
    from minerva.ops.torch_ops import apply_rope

    torch.manual_seed(0)
    cos, sin = rope_cos_sin(head_dim, 10000.0, None, 4096, 4096)
    pos = torch.randint(0, 4096, (tokens,))
    cos = cos[pos].to("cuda", dtype).unsqueeze(1)
    sin = fold_sin(sin)[pos].to("cuda", dtype).unsqueeze(1)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device="cuda")
    cache = torch.randn(2, 9, 16, kv_heads, head_dim, dtype=dtype, device="cuda")
    slots = torch.randperm(9 * 16, device="cuda")[:tokens]
    slots[tokens // 2] = -1  # a padding row
    fused_cache = cache.clone()
    q = rope_write_kv(qkv, cos, sin, fused_cache, slots, heads, kv_heads)

    view = qkv.view(tokens, heads + 2 * kv_heads, head_dim)
    qk = triton_ops.apply_rope(view[:, : heads + kv_heads], cos, sin)
    assert torch.equal(q, qk[:, :heads])
    ref_cache, real = cache.clone(), slots >= 0  # the torch twin has no padding rule
    k, v = qk[:, heads:], view[:, heads + kv_heads :]
    torch_paged.write_kv(ref_cache, k[real], v[real], slots[real])
    assert torch.equal(fused_cache, ref_cache)
    ref_q = apply_rope(view[:, :heads], cos, sin)
    torch.testing.assert_close(q.float(), ref_q.float(), atol=TOL[dtype] * 4, rtol=TOL[dtype])


@pytest.mark.parametrize("n, inter", [(64, 128), (1000, 1000), (2048, 5632)])
def test_gated_down_gemv_equals_silu_and_mul_then_gemv(dtype, n, inter):
    """The down projection with silu(gate) * up computed while loading its input."""
    from minerva.ops.triton_gemv import gemv_add_residual
    from minerva.ops.triton_ops import silu_and_mul

    torch.manual_seed(0)
    gate_up = torch.randn(1, 2 * inter, device="cuda", dtype=dtype) * 3
    w = torch.randn(n, inter, device="cuda", dtype=dtype) / inter**0.5
    residual = torch.randn(1, n, device="cuda", dtype=dtype)
    h, partials = gemv_add_residual(gate_up, w, None, residual, gated=True)
    ref_h, ref_partials = gemv_add_residual(silu_and_mul(gate_up), w, None, residual)
    torch.testing.assert_close(h, ref_h, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(partials, ref_partials, atol=0, rtol=TOL[dtype] * 4)


def _pdl_modes():
    from minerva.platform import Platform

    supported = torch.cuda.is_available() and Platform(torch.device("cuda")).supports_pdl
    return [False, True] if supported else [False]


@pytest.mark.parametrize("pdl_on", _pdl_modes(), ids=lambda on: "pdl" if on else "plain")
def test_one_token_path_equals_layered_path(pdl_on):
    """The batch-1 forward with the glue folded into the GEMVs against the layered forward of
    the same model and the torch glue (fp32: the same math, summed in another order), with
    kernels launched plainly and, on Hopper, with programmatic dependent launch."""
    import dataclasses

    import transformers

    from minerva.attention import AttentionMetadata, TritonAttention
    from minerva.loader.hf_config import _parse_config
    from minerva.models import build_model
    from minerva.models.options import ModelOptions
    from minerva.ops.kernels import torch_kernels, triton_kernels

    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    from pathlib import Path

    hf = _parse_config({**cfg.to_dict(), "architectures": ["LlamaForCausalLM"]}, Path("x"))
    fused_kernels = triton_kernels(pdl=pdl_on)
    # same kernels, layered: add + RMSNorm as their own kernels (no one-token GEMV hooks)
    layered_kernels = dataclasses.replace(fused_kernels, gemv_rms_norm=None, gemv_add_residual=None)
    options = {
        "fused": ModelOptions(fused_kernels, TritonAttention(pdl=pdl_on)),
        "layered": ModelOptions(layered_kernels, TritonAttention(pdl=pdl_on)),
        "torch": ModelOptions(torch_kernels(), TritonAttention()),
    }
    torch.manual_seed(0)
    models, state = {}, None
    for name, opts in options.items():
        model = build_model(hf, torch.float32, torch.device("cuda"), 128, options=opts)
        if state is None:
            for p in model.parameters():
                p.data.normal_(0, 0.05)
            state = model.state_dict()
        model.load_state_dict(state)
        models[name] = model
    assert models["fused"].one_token and not models["layered"].one_token
    kv = [torch.randn(2, 4, 16, 2, 64, device="cuda") for _ in range(3)]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([53], device="cuda"),  # block 3 (table slot 2), offset 5
        block_tables=torch.tensor([[1, 2, 3]], dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor([38], dtype=torch.int32, device="cuda"),
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device="cuda"),
        num_decodes=1,
        max_query_len=1,
        seq_lens_cpu=[38],
        query_start_loc_cpu=[0, 1],
    )
    ids, pos, idx = (torch.tensor([v], device="cuda") for v in (7, 37, 0))
    caches = {name: [c.clone() for c in kv] for name in options}
    fused, layered, torch_glue = (
        models[name](ids, pos, caches[name], meta, idx) for name in options
    )
    torch.testing.assert_close(fused, layered, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused, torch_glue, atol=1e-4, rtol=1e-4)
    for name in ("layered", "torch"):  # this token's K/V went to slot 53 in every layer
        for ours, ref in zip(caches["fused"], caches[name]):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
