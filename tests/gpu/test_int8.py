"""int8 weights with a scale per row (quant/int8.py): the several-token Triton GEMM
(ops/triton_int8.py) and the one-token GEMV on int8 rows (ops/triton_gemv.py, its scale epilogue)
against the product with the decoded weight; the engine with in-situ int8 on a GPU against the
CPU twin. CUDA; the kernels also run on the CPU under Triton's interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import pytest
import torch

from minerva.quant.fp8 import dequantize_rows
from minerva.quant.int8 import quantize_rows
from tests.gpu.interpreted import CUDA, DEVICE, LOW, MARKS, rel
from tests.gpu.near_tie import assert_agree_until_near_tie, demo_greedy_runs

pytestmark = MARKS


def _weight(n: int, k: int):
    torch.manual_seed(n + k)
    codes, scale = quantize_rows(torch.randn(n, k, device=DEVICE) * 0.05)
    return codes, scale, dequantize_rows(codes, scale)


# rows no multiple of any BLOCK_M / BLOCK_N; K no multiple of BLOCK_K (a masked last slice)
@pytest.mark.parametrize("m, n, k", [(2, 37, 300), (16, 64, 256), (19, 100, 520), (130, 136, 72)])
def test_gemm_is_the_product_with_the_decoded_weight(m, n, k):
    from minerva.ops import triton_int8

    codes, scale, deq = _weight(n, k)
    x = torch.randn(m, k, device=DEVICE).to(LOW)
    bias = torch.randn(n, device=DEVICE).to(LOW)
    want = x.float() @ deq.T
    y = triton_int8.gemm(x, codes, scale)
    assert y.shape == (m, n) and y.dtype == LOW
    # the codes are exact in x's dtype: only the output's rounding and the sums' order differ
    assert rel(y, want) < 4e-3
    yb = triton_int8.gemm(x, codes, scale, bias)
    assert rel(yb, want + bias.float()) < 4e-3
    # a strided x (a slice of a wider activation) gives the same product
    wide = torch.randn(m, k + 8, device=DEVICE).to(LOW)
    wide[:, :k] = x
    torch.testing.assert_close(triton_int8.gemm(wide[:, :k], codes, scale), y, rtol=0, atol=0)


@pytest.mark.parametrize("n, k", [(37, 1280), (64, 4096)])
def test_gemv_on_int8_rows_is_the_product_with_the_decoded_weight(n, k):
    from minerva.ops import triton_gemv

    codes, scale, deq = _weight(n, k)
    x = torch.randn(1, k, device=DEVICE).to(LOW)
    bias = torch.randn(n, device=DEVICE).to(LOW)
    y = triton_gemv.gemv(x, codes, bias, scale=scale)
    assert rel(y, x.float() @ deq.T + bias.float()) < 4e-3


@pytest.mark.skipif(not CUDA, reason="the engine on a CUDA GPU")
def test_int8_engine_on_the_gpu_agrees_with_the_cpu_twin():
    runs, llm = demo_greedy_runs("int8", device="cuda", dtype="bfloat16")
    model = llm.engine.worker.model
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    assert llm.engine.worker.runner.graphs is not None and model.one_token
    del llm
    twins, _ = demo_greedy_runs("int8", device="cpu", dtype="float32")
    # bf16 activations on the GPU against float32 on the CPU: greedy paths part only at a tie
    assert_agree_until_near_tie(runs, twins, 0.25)
