"""The engine with the CPU matrix-vector kernel (cpu_kernels=True) against transformers and
against itself with the kernel off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minerva import LLM, SamplingParams
from minerva.config import load_config
from minerva.models.linear import Linear
from minerva.ops import cpu_linear, cpu_ops, torch_ops
from tests.tiny_models import build_tiny_model, hf_greedy

# Odd sizes (vector and row tails) and matrices big enough for the threaded path.
SHAPE = dict(
    vocab_size=1001,
    hidden_size=200,
    intermediate_size=425,
    num_attention_heads=5,  # head_dim 32: q is 160 wide, not 200
    num_key_value_heads=1,
    head_dim=32,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if not cpu_linear.load():
        pytest.skip(f"no CPU kernel here: {cpu_linear.status()}")
    path = tmp_path_factory.mktemp("cpu_kernels")
    hf = build_tiny_model(path, "llama", seed=2, attention_bias=True, mlp_bias=True, **SHAPE)
    return path, hf


def _llm(path, dtype: str, cpu_kernels: bool) -> LLM:
    llm = LLM(model=str(path), device="cpu", dtype=dtype, cpu_kernels=cpu_kernels, progress=False)
    _assert_kernels(llm.engine.worker.model, cpu_kernels)
    return llm


def _assert_kernels(model, cpu_kernels: bool) -> None:
    """Every linear layer, norm and RoPE runs the C kernels (or torch), chosen at construction."""
    glue = cpu_ops if cpu_kernels else torch_ops
    linear = cpu_linear.linear if cpu_kernels else F.linear
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 4 * len(model.model.layers) + 1  # + the lm_head
    assert all(m.method.linear is linear for m in linears)
    assert model.model.layers[0].self_attn.backend.name == ("cpu" if cpu_kernels else "torch")
    norms = [m for m in model.modules() if hasattr(m, "add_rms_norm")]
    assert norms and all(m.add_rms_norm is glue.add_rms_norm for m in norms)
    assert all(layer.self_attn.rope is glue.apply_rope for layer in model.model.layers)


def _run(llm: LLM, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    llm.engine.worker.runner.captured_logits = []
    out = llm.generate([prompt], SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    return out[0].token_ids, [t[0] for t in llm.engine.worker.runner.captured_logits]


def test_fp32_greedy_and_logits_match_transformers(tiny):
    path, hf = tiny
    prompt = list(range(3, 40, 2))
    ref_tokens, ref_logits = hf_greedy(hf, prompt, 12)
    tokens, logits = _run(_llm(path, "float32", True), prompt, 12)
    assert tokens == ref_tokens
    for step, (ours, ref) in enumerate(zip(logits, ref_logits)):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0, msg=f"step {step}")


@pytest.mark.parametrize("prompt_len", [25, cpu_linear.GEMM_MIN_ROWS[torch.bfloat16] + 13])
def test_bf16_kernel_on_equals_off(tiny, prompt_len):
    """bf16: the kernel and torch round differently (one rounding of an fp32 sum each), so the
    logits agree to a few bf16 ulps rather than bitwise. The longer prompt's prefill takes the
    tiled GEMM (cpu_gemm), the shorter one's the GEMV."""
    path, _ = tiny
    prompt = list(range(5, 5 + prompt_len))
    on_tokens, on_logits = _run(_llm(path, "bfloat16", True), prompt, 8)
    off_tokens, off_logits = _run(_llm(path, "bfloat16", False), prompt, 8)
    # prefill (many rows) and the first decode step share the prefix; compare their logits
    torch.testing.assert_close(on_logits[0], off_logits[0], atol=0.1, rtol=0.02)
    torch.testing.assert_close(on_logits[1], off_logits[1], atol=0.1, rtol=0.02)
    assert on_tokens[:2] == off_tokens[:2]


def test_switch_off_by_env(tiny):
    path, _ = tiny
    config, sources = load_config(
        overrides={"model": str(path), "device": "cpu", "dtype": "float32"},
        env={"MINERVA_CPU_KERNELS": "0"},
    )
    assert (
        config.device.cpu_kernels is False and sources["cpu_kernels"] == "env:MINERVA_CPU_KERNELS"
    )
    _assert_kernels(LLM(config=config, progress=False).engine.worker.model, cpu_kernels=False)


def test_every_linear_layer_runs_the_kernel(tiny, monkeypatch):
    """A short prompt and its decode steps never reach F.linear (every layer takes the kernel)."""
    path, _ = tiny
    llm = _llm(path, "float32", True)
    calls = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    _run(llm, list(range(3, 23)), 4)
    assert calls == []
