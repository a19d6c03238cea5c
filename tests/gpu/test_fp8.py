"""fp8 weights on CUDA (quant/fp8.py): the Triton GEMV on fp8 rows with the scale epilogue (plain,
RMSNorm in, SiLU * mul in, residual out) and the scaled matmul of several tokens against the
decoded weights; the engine with in-situ fp8 against the CPU twin. Needs fp8 support (8.9+)."""

from __future__ import annotations

import pytest
import torch

from minerva.quant.fp8 import FP8, MIN_CAPABILITY, dequantize_rows, quantize_rows
from tests.gpu.near_tie import assert_agree_until_near_tie, demo_greedy_runs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < MIN_CAPABILITY,
        reason="needs a CUDA GPU with fp8 (compute capability 8.9+)",
    ),
]

SHAPES = [(37, 1280), (256, 4096)]  # rows no multiple of the GEMV's BLOCK_N; a masked K slice


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _weight(n: int, k: int):
    torch.manual_seed(n + k)
    codes, scale = quantize_rows((torch.randn(n, k) * 0.05).cuda())
    return codes, scale, dequantize_rows(codes, scale)


@pytest.mark.parametrize("n, k", SHAPES)
def test_gemv_on_fp8_rows_is_the_product_with_the_decoded_weight(n, k):
    from minerva.ops import torch_ops, triton_gemv

    codes, scale, deq = _weight(n, k)
    x = torch.randn(1, k, device="cuda").bfloat16()
    bias = torch.randn(n, device="cuda").bfloat16()
    y = triton_gemv.gemv(x, codes, bias, scale=scale)
    assert _rel(y, x.float() @ deq.T + bias.float()) < 8e-3
    # SiLU * mul in, residual out (the down projection's hook)
    if n == k:
        return
    gate_up = torch.randn(1, 2 * k, device="cuda").bfloat16()
    res = torch.randn(1, n, device="cuda").bfloat16()
    h, partials = triton_gemv.gemv_add_residual(gate_up, codes, None, res, True, scale=scale)
    want = torch_ops.silu_and_mul(gate_up).float() @ deq.T + res.float()
    assert _rel(h, want) < 8e-3
    torch.testing.assert_close(partials.sum(), h.float().square().sum(), rtol=1e-4, atol=1e-3)
    # RMSNorm in (the qkv / gate_up hook), from a residual stream and its partials
    codes2, scale2, deq2 = _weight(k, n)
    norm_w = torch.rand(n, device="cuda").bfloat16() + 0.5
    y2 = triton_gemv.gemv_rms_norm(h, partials, norm_w, 1e-5, codes2, None, scale=scale2)
    want2 = torch_ops.rms_norm(h, norm_w, 1e-5).float() @ deq2.T
    assert _rel(y2, want2) < 1e-2


@pytest.mark.parametrize("m, k", [(1, 4096), (17, 4096), (64, 1280), (5, 3000)])
def test_triton_x_quantization_is_the_twins_bytes(m, k):
    from minerva.ops import triton_fp8
    from minerva.quant.fp8 import quantize_x

    torch.manual_seed(m)
    x = torch.randn(m, k, device="cuda").bfloat16() * 3
    x[0, :7] = 0.0
    if m > 2:
        x[2] = 0.0  # an all-zero row: scale TINY, codes zero
    rows = m + (-m % 16)
    codes, scales = triton_fp8.quantize_rows(x, rows)
    ref_codes, ref_scales = quantize_x(x, rows)
    assert codes.shape == (rows, k) and scales.shape == (rows, 1)
    assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8))
    assert torch.equal(scales[:m], ref_scales[:m])
    assert not codes[m:].float().any()


@pytest.mark.parametrize("triton_x", [False, True])
@pytest.mark.parametrize("m", [2, 17, 64])
def test_scaled_matmul_is_the_product_with_x_in_fp8_rows(m, triton_x):
    from minerva.quant.fp8 import FP8_MAX, scaled_matmul

    codes, scale, deq = _weight(256, 4096)
    x = torch.randn(m, 4096, device="cuda").bfloat16()
    y = scaled_matmul(x, codes, scale, triton_x=triton_x)
    xs = x.float().abs().amax(dim=1, keepdim=True) / FP8_MAX
    xd = (x.float() / xs).to(FP8).float() * xs
    assert y.shape == (m, 256) and y.dtype == torch.bfloat16
    assert _rel(y, xd @ deq.T) < 1e-2
    assert _rel(y, x.float() @ deq.T) < 6e-2  # and near the bf16-activation product


NEAR_TIE = 0.25
"""Prefill on the GPU multiplies fp8 activations (one scale per token): logprobs move by up to
this much against the CPU twin's float products; greedy paths may part only at a near tie."""


def test_fp8_engine_on_the_gpu_agrees_with_the_cpu_twin():
    runs, llm = demo_greedy_runs("fp8", device="cuda", dtype="bfloat16")
    model = llm.engine.worker.model
    assert model.model.layers[0].mlp.down_proj.weight.dtype == FP8
    assert llm.engine.worker.runner.graphs is not None and model.one_token
    del llm
    twins, _ = demo_greedy_runs("fp8", device="cpu", dtype="float32")
    assert_agree_until_near_tie(runs, twins, NEAR_TIE)
