"""ops/triton_quant.py against its twin: the torch decoder (quant/gguf_dequant.py) + matmul, at odd
shapes, block boundaries and every type with a plane layout; the fused one-token epilogues
against the layered ops. CUDA; or on the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import os

import pytest
import torch

from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_planes import PLANE_TYPES, to_planes
from minerva.quant.gguf_quantize import quantize_tensor
from minerva.quant.gguf_types import GGMLType

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() or INTERPRET), reason="needs a CUDA GPU (or Triton's "
        "interpreter: TRITON_INTERPRET=1)"
    ),
]  # fmt: skip

# the interpreter emulates bf16 arithmetic wrongly (numpy has no bf16): fp16 there
LOW = torch.bfloat16 if DEVICE == "cuda" else torch.float16
TYPES = sorted(PLANE_TYPES)
# (rows, cols): a row count that is no multiple of any BLOCK_N, and K that is a whole number of
# blocks but not of the kernels' BLOCK_K (a masked last tile)
SHAPES = [(37, 256 * 5), (8, 256)]


def _weight(ggml_type: GGMLType, rows: int, cols: int):
    torch.manual_seed(rows * 7 + cols + int(ggml_type))
    blocks = quantize_tensor(torch.randn(rows, cols), ggml_type).data
    ref = dequantize(blocks, ggml_type)  # float32 [rows, cols]
    return to_planes(blocks.to(DEVICE), ggml_type, cols), ref.to(DEVICE)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows, cols", SHAPES)
def test_dequantize_equals_the_torch_decoder_exactly(ggml_type, rows, cols):
    from minerva.ops import triton_quant

    planes, ref = _weight(ggml_type, rows, cols)
    out = triton_quant.dequantize(planes, ggml_type, cols, torch.float32)
    assert torch.equal(out, ref)
    bf16 = triton_quant.dequantize(planes, ggml_type, cols)
    if INTERPRET and DEVICE == "cpu":  # the interpreter truncates to bf16; CUDA rounds to nearest
        torch.testing.assert_close(bf16.float(), ref.bfloat16().float(), rtol=2**-7, atol=0)
    else:
        assert torch.equal(bf16, ref.bfloat16())


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows, cols", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, LOW], ids=str)
def test_one_token_product_matches_the_twin(ggml_type, rows, cols, dtype):
    from minerva.ops import triton_quant

    planes, ref = _weight(ggml_type, rows, cols)
    x = torch.randn(1, cols, device=DEVICE).to(dtype)
    bias = torch.randn(rows, device=DEVICE).to(dtype)
    out = torch.full((1, rows), float("nan"), dtype=dtype, device=DEVICE)
    y, partials = triton_quant.qgemv(x, planes, ggml_type, bias, out=out)
    assert y is out and partials is None
    want = x.float() @ ref.T + bias.float()
    assert _rel(y, want) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_one_token_fused_norm_gate_and_residual_match_the_layered_ops(ggml_type):
    from minerva.ops import torch_ops, triton_quant

    rows, cols, dtype = 37, 512, LOW
    planes, ref = _weight(ggml_type, rows, cols)
    h = (torch.randn(1, cols, device=DEVICE) * 3).to(dtype)
    norm_w = torch.randn(cols, device=DEVICE).to(dtype)
    parts = torch.stack([h.float()[:, :200].square().sum(), h.float()[:, 200:].square().sum()])
    y, _ = triton_quant.qgemv(h, planes, ggml_type, norm=(parts, norm_w, 1e-5))
    normed = torch_ops.rms_norm(h, norm_w, 1e-5)
    assert _rel(y, normed.float() @ ref.T) < 1e-2

    gate_up = torch.randn(1, 2 * cols, device=DEVICE).to(dtype)
    residual = torch.randn(1, rows, device=DEVICE).to(dtype)
    y, partials = triton_quant.qgemv(gate_up, planes, ggml_type, residual=residual, gated=True)
    act = torch_ops.silu_and_mul(gate_up)
    want = (act.float() @ ref.T).to(dtype).float() + residual.float()
    assert _rel(y, want) < 1e-2
    torch.testing.assert_close(partials.sum(), y.float().square().sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [2, 16, 37])
def test_several_tokens_product_matches_the_twin(ggml_type, m):
    from minerva.ops import triton_quant

    rows, cols = SHAPES[0]
    planes, ref = _weight(ggml_type, rows, cols)
    x = torch.randn(m, cols, device=DEVICE).to(LOW)
    bias = torch.randn(rows, device=DEVICE).to(LOW)
    y = triton_quant.qgemm(x, planes, ggml_type, bias)
    want = x.float() @ ref.to(LOW).float().T + bias.float()
    assert y.shape == (m, rows) and _rel(y, want) < 1e-2
    # a strided output (a slice of a wider buffer) is written in place, nothing beside it
    wide = torch.zeros(m, rows + 5, dtype=LOW, device=DEVICE)
    triton_quant.qgemm(x, planes, ggml_type, bias, out=wide[:, 2 : 2 + rows])
    assert torch.equal(wide[:, 2 : 2 + rows], y)
    assert not wide[:, :2].any() and not wide[:, 2 + rows :].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA model path")
@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_K, GGMLType.Q8_0], ids=lambda t: t.name)
def test_a_gguf_layer_on_cuda_uses_planes_and_answers_like_its_twin(ggml_type):
    from minerva.models.linear import QKVLinear
    from minerva.ops import torch_ops
    from minerva.ops.kernels import triton_kernels
    from minerva.quant.gguf import GGUFLinearMethod, file_blocks

    q, k = (quantize_tensor(torch.randn(r, 256), ggml_type) for r in (128, 64))
    v = quantize_tensor(torch.randn(64, 256), GGMLType.Q6_K)  # Q4_K_M keeps attn_v wider
    with torch.device("cuda"):
        layer = QKVLinear(256, 32, 4, 2, False, GGUFLinearMethod(triton_kernels()), torch.bfloat16)
    for shard, piece in zip("qkv", (q, k, v), strict=True):
        layer.weight_loader(layer.weight, piece, shard)
    layer.method.process_after_loading(layer)
    assert [g[1:] for g in layer.gguf_groups] == [
        (ggml_type, 192, "planes"), (GGMLType.Q6_K, 64, "planes")
    ]  # fmt: skip
    assert torch.equal(file_blocks(layer, "weight").cpu(), torch.cat([q.data, k.data]))
    w = torch.cat([dequantize(p.data, p.ggml_type) for p in (q, k, v)]).cuda()
    for t in (1, 5, 40):
        x = torch.randn(t, 256, device="cuda").bfloat16()
        assert _rel(layer.method.apply(layer, x), x.float() @ w.T) < 1e-2
    h = torch.randn(1, 256, device="cuda").bfloat16()
    norm_w = (torch.rand(256, device="cuda") + 0.5).bfloat16()
    parts = h.float().square().sum().reshape(1)
    fused = layer.method.apply_norm_in(layer, h, parts, norm_w, 1e-6)
    assert _rel(fused, torch_ops.rms_norm(h, norm_w, 1e-6).float() @ w.T) < 1e-2
    res = torch.randn(1, 256, device="cuda").bfloat16()
    y, partials = layer.method.apply_add_residual(layer, h, res)
    assert _rel(y, (h.float() @ w.T).bfloat16().float() + res.float()) < 1e-2
    torch.testing.assert_close(partials.sum(), y.float().square().sum(), rtol=1e-4, atol=1e-3)


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="inline PTX (dp4a): CUDA")


def _dequant_x(xq) -> torch.Tensor:
    codes, dx, _ = xq
    return codes.float().reshape(-1, 32) * dx[:, None]


@CUDA_ONLY
@pytest.mark.parametrize("k", [256, 1280])
def test_quantize_x_is_llama_cpp_q8_rounding(k):
    from minerva.ops import torch_ops, triton_qgemv_int8

    x = (torch.randn(1, k, device="cuda") * 4).bfloat16()
    x[0, 40:72] = 0  # an all-zero block gets scale 0
    codes, dx, sx = triton_qgemv_int8.quantize_x(x, k)
    blocks = x.float().reshape(-1, 32)
    want_dx = blocks.abs().amax(1) / 127
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=0)
    inv = torch.where(want_dx > 0, 1 / want_dx, torch.zeros_like(want_dx))
    want = torch.round(blocks * inv[:, None])
    assert (codes.float().reshape(-1, 32) - want).abs().max() <= 1  # rint vs round at .5 ulps
    torch.testing.assert_close(
        sx, (codes.float().reshape(-1, 16).sum(1) * dx.repeat_interleave(2)), rtol=1e-6, atol=0
    )
    # the norm and the gate are applied before quantizing
    norm_w = torch.rand(k, device="cuda").bfloat16() + 0.5
    parts = x.float().square().sum().reshape(1)
    codes, dx, _ = triton_qgemv_int8.quantize_x(x, k, norm=(parts, norm_w, 1e-5))
    ref = torch_ops.rms_norm(x, norm_w, 1e-5).float()
    assert _rel(_dequant_x((codes, dx, None)).reshape(1, k), ref) < 1e-2
    gate_up = torch.randn(1, 2 * k, device="cuda").bfloat16()
    codes, dx, _ = triton_qgemv_int8.quantize_x(gate_up, k, gated=True)
    ref = torch_ops.silu_and_mul(gate_up).float()
    assert _rel(_dequant_x((codes, dx, None)).reshape(1, k), ref) < 1e-2


@CUDA_ONLY
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows, cols", SHAPES)
def test_int8_gemv_is_the_exact_product_with_the_quantized_x(ggml_type, rows, cols):
    """dp4a sums are exact integers: the result is x's 8-bit form times the decoded weight,
    up to float32 rounding, with bias and residual epilogues."""
    from minerva.ops import triton_qgemv_int8

    planes, ref = _weight(ggml_type, rows, cols)
    x = torch.randn(1, cols, device="cuda").bfloat16()
    xq = triton_qgemv_int8.quantize_x(x, cols)
    xhat = _dequant_x(xq).reshape(1, cols)
    bias = torch.randn(rows, device="cuda").bfloat16()
    res = torch.randn(1, rows, device="cuda").bfloat16()
    out = torch.full((1, rows), float("nan"), device="cuda").bfloat16()
    triton_qgemv_int8.qgemv_int8(xq, planes, ggml_type, bias, out=out)
    want = xhat @ ref.T + bias.float()
    assert _rel(out, want) < 8e-3  # the bf16 output's rounding
    out2 = torch.empty_like(out)
    partials = triton_qgemv_int8.qgemv_int8(xq, planes, ggml_type, bias, out=out2, residual=res)
    assert _rel(out2, out.float() + res.float()) < 8e-3
    torch.testing.assert_close(partials.sum(), out2.float().square().sum(), rtol=1e-4, atol=1e-3)
    assert _rel(out, x.float() @ ref.T + bias.float()) < 3e-2  # and close to the float product


@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0], ids=str)
@pytest.mark.parametrize("gated", [False, True], ids=["norm", "gated"])
def test_a_gemv_quantizes_its_output_for_the_next_layer_as_quantize_x_would(ggml_type, gated):
    """quant_out: the GEMV's last program leaves quantize_x's result of its own output (RMSNorm
    of the residual stream, or silu(gate) * up), the output itself unchanged, the counter at 0."""
    from minerva.ops import triton_qgemv_int8 as q8

    rows, cols = (512, 256) if gated else (256, 512)
    planes, _ = _weight(ggml_type, rows, cols)
    x = torch.randn(1, cols, device=DEVICE).to(LOW)
    xq = q8.quantize_x(x, cols)
    res = None if gated else torch.randn(1, rows, device=DEVICE).to(LOW)
    norm_w = torch.rand(rows, device=DEVICE).to(LOW) + 0.5
    kq = rows // 2 if gated else rows
    count = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    qo = q8.QuantOut(q8.quant_out_buffers(kq, DEVICE), count, None if gated else (norm_w, 1e-5),
                     gated)  # fmt: skip
    for config in [None, (2, 256, 2, 1), (8, 256, 4, 1)]:  # 1 row to many per program
        out = torch.empty(1, rows, device=DEVICE, dtype=LOW)
        plain = torch.empty_like(out)
        parts = q8.qgemv_int8(xq, planes, ggml_type, out=out, residual=res, config=config,
                              quant_out=qo)  # fmt: skip
        q8.qgemv_int8(xq, planes, ggml_type, out=plain, residual=res, config=config)
        assert torch.equal(out, plain) and int(count) == 0
        if gated:
            want = q8.quantize_x(out, kq, gated=True)
        else:
            want = q8.quantize_x(out, kq, norm=(parts, norm_w, 1e-5))
        codes, dx, sx = qo.xq
        assert (codes.int() - want[0].int()).abs().max() <= (0 if INTERPRET else 1)
        torch.testing.assert_close(dx, want[1], rtol=1e-6, atol=0)
        torch.testing.assert_close(sx, want[2], rtol=1e-5, atol=1e-6)
        qo.xq[0].fill_(0), qo.xq[1].fill_(0), qo.xq[2].fill_(0)


def test_quant_out_refuses_what_it_cannot_fuse():
    from minerva.ops import triton_qgemv_int8 as q8

    planes, _ = _weight(GGMLType.Q8_0, 64, 256)
    xq = q8.quantize_x(torch.randn(1, 256, device=DEVICE).to(LOW), 256)
    count = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    out = torch.empty(1, 64, device=DEVICE, dtype=LOW)
    w = torch.ones(64, device=DEVICE, dtype=LOW)
    with pytest.raises(ValueError, match="residual stream"):  # a norm needs the residual out
        q8.qgemv_int8(
            xq,
            planes,
            GGMLType.Q8_0,
            out=out,
            quant_out=q8.QuantOut(q8.quant_out_buffers(64, DEVICE), count, (w, 1e-5)),
        )
    with pytest.raises(ValueError, match="buffers for 64"):
        q8.qgemv_int8(
            xq,
            planes,
            GGMLType.Q8_0,
            out=out,
            quant_out=q8.QuantOut(q8.quant_out_buffers(64, DEVICE), count, gated=True),
        )


# ---- several tokens on the int8 tensor cores (ops/triton_qgemm_int8.py) -----------------------


@pytest.mark.parametrize("m", [1, 3, 40])
def test_quantize_rows_is_llama_cpp_q8_1_rounding(m):
    """Per row and block of 32: scale amax / 127, codes roundf(x / scale) (halves away from
    zero), and the scaled sum of the codes; an all-zero block gets scale 0 and zero codes."""
    from minerva.ops import triton_qgemm_int8

    k = 256 * 3
    torch.manual_seed(m)
    x = (torch.randn(m, k, device=DEVICE) * 3).to(LOW)
    x[0, 64:96] = 0
    x[-1, 0:32] = torch.arange(32, device=DEVICE).to(LOW) - 15.5  # exact halves after scaling
    codes, dx, sx = triton_qgemm_int8.quantize_rows(x)
    blocks = x.float().reshape(m, -1, 32)
    want_dx = blocks.abs().amax(-1) / 127
    torch.testing.assert_close(dx, want_dx, rtol=0, atol=0)
    inv = torch.where(want_dx > 0, 1 / want_dx, torch.zeros_like(want_dx))
    v = blocks * inv[..., None]
    want = torch.sign(v) * torch.floor(v.abs() + 0.5)
    got = codes.float().reshape(m, -1, 32)
    off = (got - want).abs()
    # CUDA's 1 / d may differ from torch's by an ulp, which moves a value at .5 to either side
    near_half = (v.abs() - torch.floor(v.abs()) - 0.5).abs() < 1e-4
    assert off.max() <= 1 and bool(near_half[off > 0].all())
    assert bool((got == want)[~near_half].all())
    torch.testing.assert_close(sx, got.sum(-1) * want_dx, rtol=1e-6, atol=0)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [2, 17, 40])
def test_int8_several_tokens_is_the_exact_product_with_the_quantized_x(ggml_type, m):
    """Integer dot products are exact: the result is x's 8-bit form times the decoded weight up
    to float32 rounding (and the bf16 output's), with bias; strided outputs written in place."""
    from minerva.ops import triton_qgemm_int8

    rows, cols = SHAPES[0]
    planes, ref = _weight(ggml_type, rows, cols)
    torch.manual_seed(m)
    x = torch.randn(m, cols, device=DEVICE).to(LOW)
    bias = torch.randn(rows, device=DEVICE).to(LOW)
    codes, dx, sx = triton_qgemm_int8.quantize_rows(x)
    xhat = (codes.float().reshape(m, -1, 32) * dx[..., None]).reshape(m, cols)
    y = triton_qgemm_int8.qgemm_int8(x, planes, ggml_type, bias)
    want = xhat @ ref.T + bias.float()
    assert y.shape == (m, rows) and _rel(y, want) < 8e-3
    assert _rel(y, x.float() @ ref.T + bias.float()) < 3e-2  # and close to the float product
    for config in [(16, 64, 4, 2), (32, 128, 8, 3)]:  # tiles that mask rows and tokens
        y2 = triton_qgemm_int8.qgemm_int8(x, planes, ggml_type, bias, config=config)
        assert _rel(y2, y) < 1e-3
    wide = torch.zeros(m, rows + 5, dtype=LOW, device=DEVICE)
    triton_qgemm_int8.qgemm_int8(x, planes, ggml_type, bias, out=wide[:, 2 : 2 + rows])
    assert torch.equal(wide[:, 2 : 2 + rows], y)
    assert not wide[:, :2].any() and not wide[:, 2 + rows :].any()
