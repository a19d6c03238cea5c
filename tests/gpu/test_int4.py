"""4-bit weights in groups of 128 (quant/int4.py): the Triton GEMV with its fused input and
epilogue, and the several-token GEMM (ops/triton_int4.py), against the product with the decoded
weight and the layered ops; the engine with in-situ int4 on a GPU against the CPU twin. CUDA; the
kernels also run on the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from minerva.ops import torch_ops
from minerva.quant.int4 import dequantize_rows, quantize_rows
from tests.gpu.interpreted import CUDA, DEVICE, LOW, MARKS, rel
from tests.gpu.near_tie import assert_agree_until_near_tie, demo_greedy_runs

pytestmark = MARKS


def _weight(n: int, k: int):
    torch.manual_seed(n + k)
    w = torch.randn(n, k, device=DEVICE) * 0.05 + 0.01  # groups whose range is off-centre
    packed, scale, offset = quantize_rows(w)
    return packed, scale, offset, dequantize_rows(packed, scale, offset)


def _x_of(xq) -> torch.Tensor:
    """What the dp4a kernel multiplies: x's 8-bit codes times their block scales, [1, K]."""
    codes, dx, _ = xq
    return (codes.float().reshape(-1, 32) * dx[:, None]).reshape(1, -1)


def _x_seen(int8_x: bool, x: torch.Tensor, k: int, **how) -> torch.Tensor:
    """The input the GEMV multiplies: x's 8-bit form (int8_x), else x itself (float32)."""
    from minerva.ops import triton_qgemv_int8

    return _x_of(triton_qgemv_int8.quantize_x(x, k, **how)) if int8_x else x.float()


# rows no multiple of BLOCK_N; group counts no multiple of the GEMV's BLOCK_G
@pytest.mark.parametrize("int8_x", [False, True], ids=["float-x", "int8-x"])
@pytest.mark.parametrize("n, k", [(37, 384), (64, 1280), (8, 128), (3, 2304)])
def test_gemv_is_the_product_with_the_decoded_weight(n, k, int8_x):
    """dp4a sums are exact integers: the int8-x kernel is x's 8-bit form times the decoded
    weight up to float32 rounding; the float kernel is x times it."""
    from minerva.ops import triton_int4

    packed, scale, offset, deq = _weight(n, k)
    x = torch.randn(1, k, device=DEVICE).to(LOW)
    bias = torch.randn(n, device=DEVICE).to(LOW)
    y = triton_int4.gemv(x, packed, scale, offset, bias, int8_x=int8_x)
    assert y.shape == (1, n) and y.dtype == LOW
    assert rel(y, _x_seen(int8_x, x, k) @ deq.T + bias.float()) < 4e-3
    assert rel(y, x.float() @ deq.T + bias.float()) < 3e-2  # and close to the float product


@pytest.mark.parametrize("int8_x", [False, True], ids=["float-x", "int8-x"])
def test_gemv_fusions_match_the_layered_ops(int8_x):
    from minerva.ops import triton_int4

    n, k = 256, 384
    packed, scale, offset, deq = _weight(n, k)  # the down projection: k = intermediate
    gate_up = torch.randn(1, 2 * k, device=DEVICE).to(LOW)
    res = torch.randn(1, n, device=DEVICE).to(LOW)
    h, partials = triton_int4.gemv_add_residual(
        gate_up, packed, scale, offset, None, res, True, int8_x=int8_x
    )
    act = torch_ops.silu_and_mul(gate_up)
    seen = _x_seen(int8_x, gate_up, k, gated=True) if int8_x else act.float()
    assert rel(h, seen @ deq.T + res.float()) < 4e-3
    assert rel(h, act.float() @ deq.T + res.float()) < 3e-2
    torch.testing.assert_close(partials.sum(), h.float().square().sum(), rtol=1e-4, atol=1e-3)
    # RMSNorm in (the qkv / gate_up hook), from that residual stream and its partials
    packed2, scale2, offset2, deq2 = _weight(128, n)
    norm_w = (torch.rand(n, device=DEVICE) + 0.5).to(LOW)
    y = triton_int4.gemv_rms_norm(
        h, partials, norm_w, 1e-5, packed2, scale2, offset2, int8_x=int8_x
    )
    normed = torch_ops.rms_norm(h, norm_w, 1e-5)
    seen2 = _x_seen(True, h, n, norm=(partials, norm_w, 1e-5)) if int8_x else normed.float()
    assert rel(y, seen2 @ deq2.T) < 6e-3
    assert rel(y, normed.float() @ deq2.T) < 3e-2


@pytest.mark.parametrize("m, n, k", [(2, 37, 384), (16, 64, 256), (19, 100, 640), (130, 72, 128)])
def test_gemm_is_the_product_with_the_decoded_weight(m, n, k):
    from minerva.ops import triton_int4

    packed, scale, offset, deq = _weight(n, k)
    x = torch.randn(m, k, device=DEVICE).to(LOW)
    bias = torch.randn(n, device=DEVICE).to(LOW)
    y = triton_int4.gemm(x, packed, scale, offset)
    assert y.shape == (m, n) and y.dtype == LOW
    assert rel(y, x.float() @ deq.T) < 4e-3
    yb = triton_int4.gemm(x, packed, scale, offset, bias)
    assert rel(yb, x.float() @ deq.T + bias.float()) < 4e-3


@pytest.mark.parametrize("n, k", [(37, 384), (16, 128), (5, 1152)])
def test_dequantize_is_the_twin_weight_in_the_low_dtype(n, k):
    from minerva.ops import triton_int4

    packed, scale, offset, deq = _weight(n, k)
    w = triton_int4.dequantize(packed, scale, offset, LOW)
    assert w.shape == (n, k) and w.dtype == LOW
    # the decoded value rounded once to the low dtype (a fused multiply-add on the GPU may
    # round the float32 value differently from torch's multiply then add: one ulp)
    torch.testing.assert_close(w.float(), deq, rtol=2**-7, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="the engine on a CUDA GPU")
def test_int4_engine_on_the_gpu_agrees_with_the_cpu_twin():
    runs, llm = demo_greedy_runs("int4", device="cuda", dtype="bfloat16")
    model = llm.engine.worker.model
    assert model.model.layers[0].mlp.down_proj.method.name == "int4"
    assert model.lm_head.weight.dtype == torch.int8
    assert llm.engine.worker.runner.graphs is not None and model.one_token
    del llm
    twins, _ = demo_greedy_runs("int4", device="cpu", dtype="float32")
    assert_agree_until_near_tie(runs, twins, 0.25)
