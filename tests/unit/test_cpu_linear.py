"""ops.cpu_linear: the C matrix-vector kernel against a float64 reference, and its fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minerva.ops import cpu_linear

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Rounding of one output element, relative: fp32 sums, then one rounding to the output dtype.
OUT_EPS = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _check(y: torch.Tensor, x, w, b) -> None:
    """|y - ref| <= output rounding + fp32 summation error (scaled by sum |x * w|)."""
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    scale = F.linear(x.double().abs(), w.double().abs())
    if b is not None:
        scale = scale + b.double().abs()
    bound = OUT_EPS[y.dtype] * ref.abs() + 2e-6 * scale + 1e-30
    err = (y.double() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_float64_reference(cpu_linear_kernel, dtype, bias):
    """Odd N and K (row and vector tails), 1..4 rows and longer inputs, both thread paths."""
    g = torch.Generator().manual_seed(0)
    shapes = [(1, 1), (3, 5), (17, 33), (64, 64), (130, 577), (1001, 300), (515, 1024)]
    rows = [1, 2, 3, 4, 5, 9, 40]
    for n, k in shapes:
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        for m in rows:
            x = torch.randn(m, k, generator=g).to(dtype)
            with torch.inference_mode():
                y = cpu_linear_kernel.linear(x, w, b)
            _check(y, x, w, b)


def test_eligible_inputs_take_the_kernel(cpu_linear_kernel, monkeypatch):
    x, w = torch.randn(2, 96), torch.randn(70, 96)
    expected = F.linear(x, w)

    def boom(*args):
        raise AssertionError("fell back to F.linear")

    monkeypatch.setattr(cpu_linear.F, "linear", boom)
    with torch.inference_mode():
        y = cpu_linear_kernel.linear(x, w)
        y3 = cpu_linear_kernel.linear(x.view(1, 2, 96), w)  # leading dims are flattened
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert y3.shape == (1, 2, 70) and torch.equal(y3[0], y)


def test_same_result_for_any_thread_count(cpu_linear_kernel):
    """Each output is summed by one thread in a fixed order: bitwise equal for 1 or 2 threads."""
    x, w = torch.randn(3, 512).bfloat16(), torch.randn(4099, 512).bfloat16()
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                outs.append(cpu_linear_kernel.linear(x, w))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_falls_back_where_the_kernel_does_not_apply(cpu_linear_kernel):
    w = torch.randn(40, 24)
    with torch.inference_mode():
        x = torch.randn(24, 3).t()  # not contiguous
        torch.testing.assert_close(cpu_linear_kernel.linear(x, w), F.linear(x, w))
        empty = torch.randn(0, 24)
        assert cpu_linear_kernel.linear(empty, w).shape == (0, 40)
        mixed = torch.randn(2, 24, dtype=torch.float64)  # no float64 kernel
        torch.testing.assert_close(
            cpu_linear_kernel.linear(mixed, w.double()), F.linear(mixed, w.double())
        )
        long = torch.randn(cpu_linear.MAX_ROWS[torch.float32] + 1, 24)
        torch.testing.assert_close(cpu_linear_kernel.linear(long, w), F.linear(long, w))
        with pytest.raises(RuntimeError):
            cpu_linear_kernel.linear(torch.randn(2, 25), w)  # torch's own shape error
    # with autograd on, torch computes (the kernel has no backward)
    wg = w.clone().requires_grad_()
    y = cpu_linear_kernel.linear(torch.randn(1, 24), wg)
    assert y.requires_grad
    y.sum().backward()
    assert wg.grad is not None
