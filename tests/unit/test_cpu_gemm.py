"""ops.cpu_gemm (many-row bf16 / fp16 products over fp32 weight tiles) against F.linear in
float64, and cpu_linear's choice between it, the GEMV kernel and F.linear."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from minerva.models.layers import GatedMLP
from minerva.ops import cpu_gemm, cpu_linear, cpu_ops
from minerva.ops.kernels import cpu_kernels, torch_kernels
from minerva.platform import native_kernel_arch
from minerva.quant.base import UniformQuantConfig
from minerva.quant.dense import DenseLinearMethod

DTYPES = [torch.bfloat16, torch.float16]
IDS = ["bf16", "f16"]
OUT_EPS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # one rounding of the output


@pytest.fixture(scope="module")
def gemm_store():
    """cpu_gemm with its C output step (cpu_gemm.c) loaded; a failure where it should build."""
    if not cpu_gemm.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail("cpu_gemm.c should build here")
        pytest.skip("no CPU kernels here")
    return cpu_gemm


def _special_values(out: torch.Tensor, g: torch.Generator) -> None:
    """Ties, NaN, infinities, overflow on rounding, subnormals among normal values."""
    flat = out.view(-1)
    specials = [float("nan"), float("inf"), -float("inf"), 3.4e38, -0.0, 1e-40, 65519.0, 1e-7]
    specials += [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11]  # ties
    picks = torch.randint(0, flat.numel(), (min(flat.numel(), 3 * len(specials)),), generator=g)
    for i, p in enumerate(picks.tolist()):
        flat[p] = specials[i % len(specials)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_c_store_rounds_as_the_torch_copy(gemm_store, dtype):
    """cpu_gemm.c's transposed rounding against its slow twin, y.copy_(out.t()), bit for bit
    (a NaN stays a NaN; its payload bits are the scalar conversion's, not torch's): whole 8 x 8
    blocks and edges, into a column slice of a wider result."""
    if dtype not in gemm_store._store:
        pytest.skip("no fp16 conversions in this build")
    g = torch.Generator().manual_seed(3)
    for n, m in [(1, 1), (8, 8), (13, 21), (64, 128), (300, 37), (9, 300)]:
        out = torch.randn(n, m, generator=g) * 100
        _special_values(out, g)
        ours = torch.zeros(m, n + 11, dtype=dtype)
        twin = ours.clone()
        gemm_store.store(out, ours[:, 5 : 5 + n])
        twin[:, 5 : 5 + n].copy_(out.t())
        nan = twin.isnan()
        assert torch.equal(ours.isnan(), nan), (n, m)
        assert torch.equal(ours.view(torch.int16)[~nan], twin.view(torch.int16)[~nan]), (n, m)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_c_widening_is_the_torch_copy(gemm_store, dtype):
    """cpu_gemm.c's widening to fp32 against torch's copy, bit for bit (NaNs stay NaNs), for
    sizes around its vector length and its per-thread chunk."""
    if dtype not in gemm_store._widen:
        pytest.skip("no fp16 conversions in this build")
    g = torch.Generator().manual_seed(5)
    for numel in [1, 7, 8, 9, 100, (1 << 16) + 3, 3 << 16]:
        src = torch.randn(numel, generator=g) * 100
        _special_values(src, g)
        src = src.to(dtype)
        ours = torch.empty(numel)
        gemm_store.widen(src, ours)
        nan = src.isnan()
        assert torch.equal(ours.isnan(), nan), numel
        assert torch.equal(ours[~nan], src.float()[~nan]), numel


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_products_equal_with_and_without_the_c_conversions(gemm_store, dtype, monkeypatch):
    """The tiled GEMM gives the same bits whether its conversions run in C or in torch."""
    monkeypatch.setattr(cpu_gemm, "TILE_BYTES", 4 * 24 * 40)  # several tiles and passes
    monkeypatch.setattr(cpu_gemm, "PASS_ROWS", 19)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(203, 40, generator=g).to(dtype)
    b = torch.randn(203, generator=g).to(dtype)
    x = torch.randn(45, 40, generator=g).to(dtype)
    with torch.inference_mode():
        fast = cpu_gemm.linear(x, w, b)
        monkeypatch.setattr(cpu_gemm, "_store", {})
        monkeypatch.setattr(cpu_gemm, "_widen", {})
        slow = cpu_gemm.linear(x, w, b)
    assert torch.equal(fast, slow)
    _check(fast, x, w, b)


def _check(y: torch.Tensor, x, w, b) -> None:
    """|y - ref| <= output rounding + the fp32 summation bound (K + 2) u sum |x w| (+ |b|).

    Products of 16-bit values are exact in fp32, so any fp32 summation order stays inside it."""
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    scale = F.linear(x.double().abs(), w.double().abs())
    if b is not None:
        scale = scale + b.double().abs()
    bound = OUT_EPS[y.dtype] * ref.abs() + (x.shape[-1] + 2) * 2.0**-24 * scale + 1e-30
    err = (y.double() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape and y.is_contiguous()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_tiles_match_float64_reference(dtype, bias, monkeypatch):
    """Odd N and K; tiny tiles and passes so that tails of both are exercised."""
    monkeypatch.setattr(cpu_gemm, "TILE_BYTES", 4 * 24 * 40)  # 16-row tiles at K=40
    monkeypatch.setattr(cpu_gemm, "PASS_ROWS", 7)
    g = torch.Generator().manual_seed(0)
    for m, n, k in [(1, 1, 1), (3, 5, 9), (16, 17, 33), (23, 130, 40), (40, 1001, 300)]:
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        x = torch.randn(m, k, generator=g).to(dtype)
        with torch.inference_mode():
            _check(cpu_gemm.linear(x, w, b), x, w, b)


def test_tile_rows_stay_aligned_and_bounded():
    assert cpu_gemm.tile_rows(10, 2048) == 10  # never more rows than the weight has
    rows = cpu_gemm.tile_rows(100_000, 2048)
    assert rows % cpu_gemm.TILE_ALIGN == 0 and rows * 2048 * 4 <= cpu_gemm.TILE_BYTES
    assert cpu_gemm.tile_rows(100_000, 10**7) == cpu_gemm.TILE_ALIGN  # K larger than a tile


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_many_rows_take_the_tiled_gemm(cpu_linear_kernel, dtype, monkeypatch):
    """From GEMM_MIN_ROWS rows on (2-D or flattened 3-D), the tiled GEMM; below it, the GEMV."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(70, 96, generator=g).to(dtype)
    b = torch.randn(70, generator=g).to(dtype)
    rows = cpu_linear.GEMM_MIN_ROWS[dtype]
    calls = []
    real = cpu_gemm.linear
    monkeypatch.setattr(cpu_gemm, "linear", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.inference_mode():
        x = torch.randn(rows, 96, generator=g).to(dtype)
        _check(cpu_linear_kernel.linear(x, w, b), x, w, b)
        x3 = torch.randn(2, rows + 3, 96, generator=g).to(dtype)
        y3 = cpu_linear_kernel.linear(x3, w, b)
        assert y3.shape == (2, rows + 3, 70)
        _check(y3.view(-1, 70), x3.view(-1, 96), w, b)
        few = torch.randn(rows - 1, 96, generator=g).to(dtype)
        _check(cpu_linear_kernel.linear(few, w), few, w, None)
    assert calls == [(rows, 96), (2 * (rows + 3), 96)]


def test_float32_never_takes_the_tiled_gemm(cpu_linear_kernel, monkeypatch):
    monkeypatch.setattr(cpu_gemm, "linear", lambda *a: pytest.fail("fp32 took the tiled GEMM"))
    x, w = torch.randn(64, 48), torch.randn(40, 48)
    with torch.inference_mode():
        torch.testing.assert_close(cpu_linear_kernel.linear(x, w), F.linear(x, w))


def test_ineligible_many_row_inputs_fall_back_to_f_linear(cpu_linear_kernel, monkeypatch):
    """Non-contiguous input, weight or bias, autograd: F.linear computes."""
    monkeypatch.setattr(cpu_gemm, "linear", lambda *a: pytest.fail("took the tiled GEMM"))
    w, m = torch.randn(40, 24).bfloat16(), cpu_linear.GEMM_MIN_ROWS[torch.bfloat16] + 5
    with torch.inference_mode():
        x = torch.randn(24, m).bfloat16().t()  # [m, 24], not contiguous
        torch.testing.assert_close(cpu_linear_kernel.linear(x, w), F.linear(x, w))
        wt = torch.randn(24, 40).bfloat16().t()  # weight not contiguous
        xc = x.contiguous()
        torch.testing.assert_close(cpu_linear_kernel.linear(xc, wt), F.linear(xc, wt))
        b = torch.randn(80).bfloat16()[::2]  # bias not contiguous
        torch.testing.assert_close(cpu_linear_kernel.linear(xc, w, b), F.linear(xc, w, b))
    y = cpu_linear_kernel.linear(torch.randn(m, 24).bfloat16(), w.clone().requires_grad_())
    assert y.requires_grad


def test_scratch_works_in_and_out_of_inference_mode():
    """The scratch made under inference_mode (the engine) serves a later no_grad call."""
    cpu_gemm._local.__dict__.clear()
    x, w = torch.randn(40, 30).bfloat16(), torch.randn(20, 30).bfloat16()
    with torch.inference_mode():
        _check(cpu_gemm.linear(x, w, None), x, w, None)
    with torch.no_grad():
        _check(cpu_gemm.linear(x, w, None), x, w, None)


def test_threads_each_keep_their_own_scratch():
    """Two Python threads multiplying at once (the engine thread and a caller) do not mix."""
    g = torch.Generator().manual_seed(2)
    cases = [
        (
            torch.randn(33, 200, generator=g).bfloat16(),
            torch.randn(300, 200, generator=g).bfloat16(),
        )
        for _ in range(2)
    ]
    expected = [cpu_gemm.linear(x, w, None) for x, w in cases]
    results: list = [None, None]

    def work(i: int) -> None:
        with torch.inference_mode():
            results[i] = [cpu_gemm.linear(*cases[i], None) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert all(torch.equal(r, expected[i]) for r in results[i])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_one_tile_products_equal_the_tiled_loop(gemm_store, dtype, bias):
    """The one-tile, one-pass path (scratch views kept per shape) against its slow twin, the
    tile-and-pass loop, bit for bit; shapes repeat so that kept views are reused."""
    if dtype not in gemm_store._store:
        pytest.skip("no fp16 conversions in this build")
    g = torch.Generator().manual_seed(6)
    shapes = [(128, 512, 256), (33, 10, 8), (45, 203, 40), (128, 512, 256), (512, 18, 30)]
    for m, n, k in shapes:
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        x = torch.randn(m, k, generator=g).to(dtype)
        with torch.inference_mode():
            assert cpu_gemm._whole(x, w, b, gated=False) is not None, (m, n, k)
            fast, slow = cpu_gemm.linear(x, w, b), cpu_gemm._tiled(x, w, b)
        assert torch.equal(fast, slow), (m, n, k)
        _check(fast, x, w, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_c_store_with_silu_mul_is_store_then_silu_mul(gemm_store, dtype):
    """cpu_gemm.c's rounding with SiLU * mul fused against its twin, the transposed rounding
    into [m, 2I] followed by cpu_glue.c's SiLU * mul, bit for bit (NaNs stay NaNs): whole 8 x 8
    blocks and edges, intermediate sizes with a partial vector, large and special values."""
    if dtype not in gemm_store._store_silu_mul:
        pytest.skip("no fp16 conversions in this build")
    assert cpu_ops.load()
    g = torch.Generator().manual_seed(7)
    for inter, m in [(1, 1), (8, 8), (13, 21), (64, 128), (150, 37), (4, 300)]:
        out = torch.randn(2 * inter, m, generator=g) * 8
        _special_values(out, g)
        ours = torch.empty(m, inter, dtype=dtype)
        rc = gemm_store._store_silu_mul[dtype](
            out.data_ptr(), inter, m, ours.data_ptr(), torch.get_num_threads()
        )
        assert rc == 0
        gate_up = torch.empty(m, 2 * inter, dtype=dtype)
        gemm_store.store(out, gate_up)
        with torch.inference_mode():
            twin = cpu_ops.silu_and_mul(gate_up)
        nan = twin.isnan()
        assert torch.equal(ours.isnan(), nan), (inter, m)
        assert torch.equal(ours.view(torch.int16)[~nan], twin.view(torch.int16)[~nan]), (inter, m)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gate_up_product_with_silu_mul_equals_the_two_steps(cpu_linear_kernel, dtype, bias):
    """cpu_linear.linear_silu_mul (fused where the product is one tile) against the product
    followed by SiLU * mul, bit for bit, and against float64 within the roundings."""
    if dtype not in cpu_gemm._store_silu_mul:
        pytest.skip("no fp16 conversions in this build")
    g = torch.Generator().manual_seed(8)
    for m, inter, k in [(128, 512, 256), (33, 5, 24), (70, 100, 64)]:
        w = torch.randn(2 * inter, k, generator=g).to(dtype) / 4
        b = torch.randn(2 * inter, generator=g).to(dtype) if bias else None
        x = torch.randn(m, k, generator=g).to(dtype)
        with torch.inference_mode():
            assert cpu_gemm.linear_silu_mul(x, w, b) is not None
            fused = cpu_linear_kernel.linear_silu_mul(x, w, b)
            twin = cpu_ops.silu_and_mul(cpu_gemm._tiled(x, w, b))
        assert torch.equal(fused, twin), (m, inter, k)
        ref = F.linear(x.double(), w.double(), None if b is None else b.double())
        ref = F.silu(ref[:, :inter]) * ref[:, inter:]
        torch.testing.assert_close(fused.double(), ref, rtol=0.05, atol=0.05)


def test_gate_up_products_of_several_tiles_run_the_two_steps(cpu_linear_kernel, monkeypatch):
    """Where the product takes several tiles (gate and up rows in different tiles), no fusion:
    linear_silu_mul is the product (its tiles) followed by SiLU * mul."""
    monkeypatch.setattr(cpu_gemm, "TILE_BYTES", 4 * 16 * 40)  # 16-row tiles at K=40
    g = torch.Generator().manual_seed(9)
    w = torch.randn(64, 40, generator=g).bfloat16()
    x = torch.randn(40, 40, generator=g).bfloat16()
    with torch.inference_mode():
        assert cpu_gemm.linear_silu_mul(x, w, None) is None
        ours = cpu_linear_kernel.linear_silu_mul(x, w)
        twin = cpu_ops.silu_and_mul(cpu_gemm._tiled(x, w, None))
    assert torch.equal(ours, twin)


def test_gated_mlp_takes_the_fused_product_on_the_cpu_kernel_set(cpu_linear_kernel, monkeypatch):
    """GatedMLP with the CPU kernel set calls the fused gate_up product and computes what the
    torch kernel set does (within bf16 roundings)."""
    kernels = cpu_kernels()
    assert kernels is not None and kernels.linear_silu_mul is cpu_linear.linear_silu_mul
    calls = []
    real = cpu_gemm.linear_silu_mul
    monkeypatch.setattr(cpu_gemm, "linear_silu_mul", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(10)
    mlps = []
    for ks in [kernels, torch_kernels()]:
        quant = UniformQuantConfig(DenseLinearMethod(ks))
        mlp = GatedMLP(64, 96, False, torch.bfloat16, ks, quant, "mlp")
        mlps.append(mlp)
    with torch.no_grad():
        for p in mlps[0].parameters():
            p.copy_(torch.randn(p.shape, generator=g) / 8)
        for p, q in zip(mlps[1].parameters(), mlps[0].parameters()):
            p.copy_(q)
    x = torch.randn(40, 64, generator=g).bfloat16()
    with torch.inference_mode():
        ours, ref = mlps[0](x), mlps[1](x)
    assert calls == [1]
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0.02, atol=0.02)
