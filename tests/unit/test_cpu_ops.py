"""ops.cpu_ops (C add + RMSNorm and RoPE) against the torch twins in ops/torch_ops.py."""

from __future__ import annotations

import shutil

import pytest
import torch

from minerva.models.layers import RMSNorm
from minerva.models.rope import fold_sin, rope_cos_sin
from minerva.ops import cpu_ops
from minerva.ops.torch_ops import apply_rope
from minerva.platform import native_kernel_arch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ULP = {torch.float32: 2.0**-22, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(scope="module")
def ops():
    if not cpu_ops.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail("the glue kernels should build here")
        pytest.skip("no CPU kernels here")
    return cpu_ops


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to two roundings of the dtype (the sums run in another order, and a normalised
    value one ulp off can move the product with the weight by one more)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    tol = 2 * ULP[ref.dtype] * ref.float().abs() + 1e-6
    assert bool(((ours.float() - ref.float()).abs() <= tol).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_add_rms_norm_matches_torch_norm(ops, dtype):
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(1, 576), (3, 64), (2, 1000), (130, 2048)]:
        norm = RMSNorm(cols, 1e-5, dtype)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(cols, generator=g) * 0.5 + 1)
        x = (torch.randn(rows, cols, generator=g) * 3).to(dtype)
        res = torch.randn(rows, cols, generator=g).to(dtype)
        with torch.inference_mode():
            ref_out, ref_res = norm(x, res)
            ref_alone = norm(x)
            out, new_res = ops.add_rms_norm(x, res, norm.weight, norm.eps)
            alone, none = ops.add_rms_norm(x, None, norm.weight, norm.eps)
        assert torch.equal(new_res, ref_res) and none is None
        _close(out, ref_out)
        _close(alone, ref_alone)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_rope_matches_torch_rope(ops, dtype):
    g = torch.Generator().manual_seed(1)
    cos, sin = rope_cos_sin(64, 10000.0, None, 512, 512)
    cos, sin = cos.to(dtype), fold_sin(sin).to(dtype)
    for tokens in (1, 7, 200):
        qkv = torch.randn(tokens, 9 + 2 * 3, 64, generator=g).to(dtype)
        x = qkv[:, :12]  # q and k of a fused qkv: rows are 15 heads apart
        pos = torch.randint(0, 512, (tokens,), generator=g)
        c, s = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
        with torch.inference_mode():
            _close(ops.apply_rope(x, c, s), apply_rope(x, c, s))


def test_fallbacks_are_the_torch_twins(ops):
    x, res, w = torch.randn(2, 32), torch.randn(2, 32), torch.randn(32)
    with torch.inference_mode():
        out, new_res = ops.add_rms_norm(x.t().contiguous().t(), res, w, 1e-6)  # not contiguous
        assert torch.equal(new_res, x + res)
        mixed, _ = ops.add_rms_norm(x.double(), None, w, 1e-6)  # no float64 kernel
        assert mixed.dtype == torch.float64
    xg = x.clone().requires_grad_()
    out, _ = ops.add_rms_norm(xg, res, w, 1e-6)  # autograd on: torch computes
    out.sum().backward()
    assert xg.grad is not None
