"""KV cache dtypes: the spellings config takes, the 8-bit (fp8) cache sized by the planner, and
attention over it against the same attention over a float cache holding the dequantized values."""

from __future__ import annotations

import shutil

import pytest
import torch

from minerva.attention import cpu_backend, torch_paged
from minerva.config import EngineConfig
from minerva.errors import ConfigError
from minerva.platform import native_kernel_arch, resolve_platform
from minerva.runner.kv_cache import KVCacheSpec, plan_num_blocks, resolve_kv_cache_dtype
from tests.unit.test_cpu_attention import CASES, _step

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
CPU = resolve_platform("cpu")


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("f16", "float16"), ("F32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"),
        ("auto", "auto"), ("fp8", "float8_e4m3fn"), ("FP8_E4M3", "float8_e4m3fn"),
        ("fp8_e5m2", "float8_e5m2"), ("torch.float8_e5m2", "float8_e5m2"),
    ],
)  # fmt: skip
def test_config_takes_the_seed_spellings(name, canonical):
    assert EngineConfig.from_kwargs(kv_cache_dtype=name).cache.kv_cache_dtype == canonical


@pytest.mark.parametrize("name", ["int8", "q8_0", "float64", "fp4"])
def test_an_unknown_kv_dtype_names_the_choices(name):
    with pytest.raises(ConfigError, match="float8_e4m3fn, float8_e5m2"):
        EngineConfig.from_kwargs(kv_cache_dtype=name)
    with pytest.raises(ConfigError, match="use auto, float32"):
        resolve_kv_cache_dtype(name, torch.float32, CPU, "torch")


def test_resolve_kv_cache_dtype():
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, CPU, "cpu") is torch.bfloat16
    assert resolve_kv_cache_dtype("f16", torch.float32, CPU, "cpu") is torch.float16
    assert resolve_kv_cache_dtype("fp8", torch.float32, CPU, "cpu") is torch.float8_e4m3fn
    assert resolve_kv_cache_dtype("fp8_e5m2", torch.float32, CPU, "torch") is torch.float8_e5m2


class FakeDevice:
    def __init__(self, kind: str, bf16: bool = True, fp8: bool = False) -> None:
        self.kind, self.name, self._bf16 = kind, f"fake {kind}", bf16
        self.is_cuda = kind == "cuda"
        self.supports_fp8 = fp8

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype != torch.bfloat16 or self._bf16


def test_a_dtype_the_device_or_backend_cannot_run_is_a_config_error():
    with pytest.raises(ConfigError, match="Triton attention kernels.*8.9.*attention_backend=torch"):
        resolve_kv_cache_dtype("fp8", torch.bfloat16, FakeDevice("cuda"), "triton")
    ada = resolve_kv_cache_dtype("fp8", torch.bfloat16, FakeDevice("cuda", fp8=True), "triton")
    assert ada is torch.float8_e4m3fn  # Triton reads and writes fp8 on 8.9+
    cuda_torch = resolve_kv_cache_dtype("fp8", torch.bfloat16, FakeDevice("cuda"), "torch")
    assert cuda_torch is torch.float8_e4m3fn
    with pytest.raises(ConfigError, match=r"no 8-bit floats\): use kv_cache_dtype=auto"):
        resolve_kv_cache_dtype("fp8", torch.float16, FakeDevice("mps"), "torch")
    with pytest.raises(ConfigError, match="not supported on fake cuda: use auto, float16"):
        resolve_kv_cache_dtype("bf16", torch.float16, FakeDevice("cuda", bf16=False), "triton")


def _spec(dtype: torch.dtype) -> KVCacheSpec:
    return KVCacheSpec(num_layers=22, num_kv_heads=4, head_dim=64, block_size=16, dtype=dtype)


@pytest.mark.parametrize("dtype", FP8)
def test_an_fp8_cache_block_takes_half_the_bytes_so_the_budget_holds_twice_the_tokens(dtype):
    assert _spec(dtype).bytes_per_block == 2 * 22 * 16 * 4 * 64 * 1
    assert _spec(dtype).bytes_per_block * 2 == _spec(torch.bfloat16).bytes_per_block
    assert _spec(dtype).bytes_per_block * 4 == _spec(torch.float32).bytes_per_block

    def blocks(spec: KVCacheSpec) -> int:
        return plan_num_blocks(
            spec, CPU, max_model_len=2048, max_num_seqs=1000, num_kv_blocks=None,
            kv_cache_memory=300 * 2**20, memory_fraction=0.9,
        )  # fmt: skip

    half, full = blocks(_spec(dtype)), blocks(_spec(torch.bfloat16))
    assert half // 2 == full  # twice the blocks in the same budget (the null block included)


@pytest.mark.parametrize("dtype", FP8, ids=str)
def test_write_kv_rounds_to_fp8_and_saturates(dtype):
    cache = torch.zeros(2, 4, 2, 1, 3, dtype=dtype)
    top = torch.finfo(dtype).max
    k = torch.tensor([[[0.3, 2 * top, -1e30]]])
    torch_paged.write_kv(cache, k, -k, torch.tensor([5]))
    stored = cache.view(2, -1, 3)[:, 5].float()
    assert stored.tolist() == [[torch.tensor(0.3).to(dtype).item(), top, -top]] + [
        [-torch.tensor(0.3).to(dtype).item(), -top, top]
    ]
    assert cache.float().abs().sum() == stored.abs().sum()  # nothing else written


def _fill(cache_dtype, q_dtype, case, backend):
    """One step of CASES[case] written through `backend` into an fp8 cache and, with the same
    (rounded) values, into a q_dtype cache; returns q, both caches and the metadata."""
    seq_lens, query_lens, heads, kv_heads, dim, window = CASES[case]
    gen = torch.Generator().manual_seed(case)
    block_size, num_blocks = 16, 64
    meta = _step(seq_lens, query_lens, block_size, num_blocks, gen)
    tokens = sum(query_lens)
    cache = torch.randn(2, num_blocks, block_size, kv_heads, dim, generator=gen)
    cache = (cache * 3).to(cache_dtype)
    qkv = (torch.randn(tokens, heads + 2 * kv_heads, dim, generator=gen) * 3).to(q_dtype)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    with torch.inference_mode():
        backend.write_kv(cache, k, v, meta.slot_mapping)
    twin = cache.to(q_dtype)  # the dequantized values in a float cache
    written = twin.view(2, -1, kv_heads, dim)[:, meta.slot_mapping]
    assert torch.equal(written[0], k.to(cache_dtype).to(q_dtype))  # rounded to 8 bits...
    assert not torch.equal(written[0], k)  # ...which changes them
    return q, cache, twin, meta, dim, window


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cache_dtype", FP8, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_torch_attention_over_fp8_equals_attention_over_its_dequantized_values(
    case, cache_dtype, q_dtype
):
    q, cache, twin, meta, dim, window = _fill(cache_dtype, q_dtype, case, torch_paged)
    assert cache.dtype == cache_dtype and twin.dtype == q_dtype
    with torch.inference_mode():
        ours = torch_paged.paged_attention(q, cache, meta, dim**-0.5, window)
        ref = torch_paged.paged_attention(q, twin, meta, dim**-0.5, window)
    assert torch.equal(ours, ref)  # the reference dequantizes, then runs the same ops


@pytest.fixture(scope="module")
def cpu_kernels():
    if not cpu_backend.load():
        if native_kernel_arch() and shutil.which("cc"):
            pytest.fail("the attention kernels should build here")
        pytest.skip("no CPU kernels here")
    return cpu_backend


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_cpu_backend_over_fp8_matches_its_c_kernel_over_the_dequantized_values(
    cpu_kernels, case, q_dtype, caplog
):
    q, cache, twin, meta, dim, window = _fill(torch.float8_e4m3fn, q_dtype, case, cpu_kernels)
    caplog.set_level("INFO", logger="minerva.attention.cpu_backend")
    cpu_kernels._fallbacks_logged.clear()
    with torch.inference_mode():
        ours = cpu_kernels.paged_attention(q, cache, meta, dim**-0.5, window)
        ref = cpu_kernels.paged_attention(q, twin, meta, dim**-0.5, window)  # C decode rows
    if meta.num_decodes:
        assert "runs in torch for a float8_e4m3fn KV cache" in caplog.text
    # prefill rows: torch's attention over the fp8 cache, cpu_prefill.c's over the twin (fp32
    # sums in another order, scores of values scaled by 3)
    tol = {torch.float32: 5e-5, torch.bfloat16: 2e-2}[q_dtype]
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_doctor_reports_kv_bytes_per_token_of_the_chosen_dtype():
    from minerva import doctor  # noqa: PLC0415
    from minerva.config import load_config  # noqa: PLC0415

    def fit(kv: str) -> dict:
        config = load_config(None, {"device": "cpu", "kv_cache_dtype": kv}, env={})[0]
        return doctor.model_fit(config, CPU, bandwidth_gb_s=10.0)

    full, fp8 = fit("f32"), fit("fp8")
    assert (full["kv_cache_dtype"], fp8["kv_cache_dtype"]) == ("float32", "float8_e4m3fn")
    assert fp8["kv_bytes_per_token"] * 4 == full["kv_bytes_per_token"]
    assert fp8["kv_bytes_per_token"] == 2 * 8 * 2 * 64  # the demo model: K+V x layers x heads x dim
