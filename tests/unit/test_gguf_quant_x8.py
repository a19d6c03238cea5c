"""ops/cpu_quant_x8: the interleaved layout round-trips to the file's bytes exactly, and its
kernel equals the float64 simulation of the Q8 activation rounding (as the file-layout kernel
does); a GGUF layer takes the layout on the CPU only where every piece fits it."""

from __future__ import annotations

import shutil

import pytest
import torch

from minerva.ops import cpu_quant_x8
from minerva.platform import native_kernel_arch
from minerva.quant.gguf import GGUFLinearMethod
from minerva.quant.gguf_dequant import dequantize
from minerva.quant.gguf_quantize import quantize_tensor
from minerva.quant.gguf_types import BLOCK_GEOMETRY, GGMLType
from tests.unit.test_gguf_quant_kernels import case, simulate_q8_0, simulate_q8_k

X8_TYPES = [
    GGMLType.Q8_0,
    GGMLType.Q4_0,
    GGMLType.Q5_0,
    GGMLType.Q5_1,
    GGMLType.Q4_K,
    GGMLType.Q5_K,
    GGMLType.Q6_K,
    GGMLType.IQ4_NL,
    GGMLType.IQ4_XS,
]


@pytest.fixture(scope="module")
def x8():
    if not cpu_quant_x8.supports(GGMLType.Q4_K, 8, 256):
        arch_ok = native_kernel_arch() == "x86_64" and shutil.which("cc")
        if arch_ok and "avx2" in open("/proc/cpuinfo").read():
            pytest.fail(f"the x8 kernels should build here: {cpu_quant_x8.status()}")
        pytest.skip("no x8 layout on this CPU")
    return cpu_quant_x8


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_repack_then_unpack_gives_the_file_bytes_back(x8, ggml_type):
    _, data, _ = case(ggml_type, 1, n=24, k=512, seed=3)
    packed = x8.repack(data, ggml_type, 512)
    assert packed.shape == data.shape and not torch.equal(packed, data)
    assert torch.equal(x8.unpack(packed, ggml_type, 512), data)


# 17: tiles scheduled dynamically; 270: blocks of rows of x against the whole (small) weight
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 13, 17, 270])
@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_kernel_equals_float64_simulation(x8, ggml_type, m):
    x, data, wd = case(ggml_type, m, n=40, k=768, seed=m)
    y = x8.matmul(x, x8.repack(data, ggml_type, 768), ggml_type, 40)
    assert y is not None and y.shape == (m, 40)
    sim = simulate_q8_k if BLOCK_GEOMETRY[ggml_type][0] == 256 else simulate_q8_0
    xs = torch.from_numpy(sim(x.numpy()))
    scale = xs.abs() @ wd.abs().T
    err = (y.double() - xs @ wd.T).abs()
    assert bool((err <= 1e-5 * scale + 1e-30).all()), float((err - 1e-5 * scale).max())


# 20 rows: the tiles go to the threads dynamically; 300: blocks of rows of x do
@pytest.mark.parametrize("m", [3, 20, 300])
def test_x8_threads_do_not_change_the_result(x8, m):
    x, data, _ = case(GGMLType.Q6_K, m, n=304, k=1024)
    packed = x8.repack(data, GGMLType.Q6_K, 1024)
    torch.set_num_threads(2)
    two = x8.matmul(x, packed, GGMLType.Q6_K, 304)
    torch.set_num_threads(1)
    try:
        one = x8.matmul(x, packed, GGMLType.Q6_K, 304)
    finally:
        torch.set_num_threads(2)
    assert torch.equal(one, two)


def test_shapes_and_types_outside_the_layout_are_refused(x8):
    assert not x8.supports(GGMLType.Q4_K, 12, 256)  # rows not a multiple of 8
    assert not x8.supports(GGMLType.Q3_K, 16, 256)  # no x8 layout for this type
    _, data, _ = case(GGMLType.Q4_K, 1, n=24, k=512)
    with pytest.raises(ValueError, match="does not match"):
        x8.matmul(torch.randn(2, 768), x8.repack(data, GGMLType.Q4_K, 512), GGMLType.Q4_K, 24)


def _layer(pieces):
    from minerva.models.linear import QKVLinear  # noqa: PLC0415

    layer = QKVLinear(256, 64, 2, 2, False, GGUFLinearMethod(), torch.float32)
    for shard, piece in zip("qkv", pieces, strict=True):
        layer.weight_loader(layer.weight, piece, shard)
    layer.method.process_after_loading(layer)
    return layer


def test_a_layer_interleaves_where_every_piece_fits_and_answers_like_its_twin(x8):
    torch.manual_seed(0)
    q, k = (quantize_tensor(torch.randn(r, 256), GGMLType.Q4_K) for r in (128, 128))
    v = quantize_tensor(torch.randn(128, 256), GGMLType.Q6_K)
    released = []
    v = type(v)(v.data, v.ggml_type, v.shape, release=lambda: released.append(1))
    layer = _layer([q, k, v])
    assert [g[1:] for g in layer.gguf_groups] == [
        (GGMLType.Q4_K, 256, "x8"), (GGMLType.Q6_K, 128, "x8")
    ]  # fmt: skip
    assert released == [1]  # the file's pages are let go once copied
    x = torch.randn(3, 256)
    fast = layer.method.apply(layer, x)
    w = torch.cat([dequantize(p.data, p.ggml_type) for p in (q, k, v)])
    twin = x @ w.T
    assert bool(((fast - twin).abs() <= 2e-2 * (x.abs() @ w.abs().T)).all())


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_row_blocks_equal_one_row_at_a_time(x8, ggml_type):
    # 2-8 rows of x take the multi-row kernels (cpu_quant_x8.c's _rows forms; 11 rows: 8 + 3,
    # or 4 + 4 + 3), one row the single-row kernel: the same integer sums and float steps
    x, data, _ = case(ggml_type, 11, n=48, k=1024, seed=5)
    packed = x8.repack(data, ggml_type, 1024)
    together = x8.matmul(x, packed, ggml_type, 48)
    apart = torch.cat([x8.matmul(x[i : i + 1], packed, ggml_type, 48) for i in range(11)])
    assert torch.equal(together, apart)


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_blocks_of_rows_equal_the_tiles_of_the_weight(x8, ggml_type):
    # 300 rows against a small weight: tasks of rows of x, each against every group (the
    # rows-outer order); 100 rows at a time: below its row count, the tiles of W (the twin)
    x, data, _ = case(ggml_type, 300, n=64, k=512, seed=7)
    packed = x8.repack(data, ggml_type, 512)
    whole = x8.matmul(x, packed, ggml_type, 64)
    by_tiles = torch.cat(
        [x8.matmul(x[i : i + 100], packed, ggml_type, 64) for i in range(0, 300, 100)]
    )
    assert torch.equal(whole, by_tiles)
