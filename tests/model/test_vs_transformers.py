"""Minerva against transformers on the same tiny random weights (fp32, CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from minerva import LLM, SamplingParams
from tests.tiny_models import VOCAB, build_tiny_model, hf_greedy

ARCHS = {
    "llama": ("llama", {}),
    "llama_tied_bias": (
        "llama",
        dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    ),
    "llama3_rope": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        ),
    ),
    "linear_rope": (
        "llama",
        dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    ),
    "dynamic_rope": (
        "llama",
        dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    ),
    "yarn_rope": (
        "llama",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        ),
    ),
    "mistral_window": ("mistral", dict(sliding_window=8)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_window": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=True)),
    "qwen3_bias_window": (
        "qwen3",
        dict(attention_bias=True, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    ),
    "gqa_head_dim": ("llama", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=32)),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def tiny(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp(name)
    arch, overrides = ARCHS[name]
    hf = build_tiny_model(path, arch, seed=1, **overrides)
    return name, path, hf


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(5, 40))] for _ in range(n)]


def test_logits_match_every_step(tiny):
    """Prefill and each decode step: logits equal transformers' within 1e-4."""
    name, path, hf = tiny
    prompt = _prompts(1, seed=7)[0] + list(range(3, 20))  # longer than the sliding window
    llm = LLM(model=str(path), device="cpu", dtype="float32", block_size=4, progress=False)
    llm.engine.worker.runner.captured_logits = []
    out = llm.generate([prompt], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    ref_tokens, ref_logits = hf_greedy(hf, prompt, 10)
    assert out.token_ids == ref_tokens
    ours = llm.engine.worker.runner.captured_logits
    assert len(ours) == 10
    for step, (a, b) in enumerate(zip(ours, ref_logits)):
        torch.testing.assert_close(a[0], b, atol=1e-4, rtol=0, msg=f"{name} step {step}")


def _reference(hf, prompts, max_tokens):
    return [hf_greedy(hf, p, max_tokens)[0] for p in prompts]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    path = tmp_path_factory.mktemp("mistral_batch")
    hf = build_tiny_model(path, "mistral", seed=3, sliding_window=12)
    prompts = _prompts(7, seed=11)
    return path, prompts, _reference(hf, prompts, 12)


GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        dict(),
        dict(enable_chunked_prefill=True, max_num_batched_tokens=16),
        dict(enable_chunked_prefill=False, max_num_batched_tokens=128),
        dict(enable_prefix_caching=False),
        dict(max_num_seqs=2),
        dict(num_kv_blocks=40, block_size=4),  # too small for all at once: preemption
        dict(async_scheduling="on"),
        dict(async_scheduling="on", max_num_batched_tokens=16, max_num_seqs=3),
        dict(async_scheduling="on", num_kv_blocks=40, block_size=4),
    ],
    ids=[
        "default",
        "chunked",
        "unchunked",
        "no_prefix_cache",
        "max_seqs_2",
        "preemption",
        "async",
        "async_chunked",
        "async_preemption",
    ],
)
def test_batch_equals_single(mistral, engine_kwargs):
    """Continuous batching of prompts of different lengths equals each prompt alone in transformers."""
    path, prompts, expected = mistral
    kwargs = dict(block_size=8, max_model_len=128) | engine_kwargs
    llm = LLM(model=str(path), device="cpu", dtype="float32", progress=False, **kwargs)
    outs = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert all(o.finish_reason == "length" for o in outs)
    kv = llm.engine.kv_cache_manager
    assert kv.num_free_blocks == kv.num_blocks - 1  # nothing leaked
    if "num_kv_blocks" in engine_kwargs:
        assert llm.engine.scheduler.num_preemptions > 0


def test_prefix_cache_hits_and_same_output(mistral):
    path, prompts, _ = mistral
    shared = list(range(10, 60))
    batch = [shared + p for p in prompts[:4]]
    outs = {}
    for caching in (True, False):
        llm = LLM(
            model=str(path),
            device="cpu",
            dtype="float32",
            block_size=8,
            progress=False,
            enable_prefix_caching=caching,
        )
        first = llm.generate(batch[:1], GREEDY)
        rest = llm.generate(batch[1:], GREEDY)
        outs[caching] = [o.token_ids for o in first + rest]
        kv = llm.engine.kv_cache_manager
        if caching:
            assert kv.prefix_cache_hits >= 3 * 48  # 6 full blocks of the shared prefix, 3 requests
            assert all(o.num_cached_tokens == 48 for o in rest)
        else:
            assert kv.prefix_cache_hits == 0
    assert outs[True] == outs[False]


def test_sharded_checkpoint_and_bf16_kv_cache(tmp_path):
    """A sharded save gives the same tokens; a bfloat16 KV cache stays close to fp32 logits."""
    hf = build_tiny_model(tmp_path / "one", "llama", seed=4)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    prompt = _prompts(1, seed=3)[0]
    expected, ref_logits = hf_greedy(hf, prompt, 6)
    sharded = LLM(model=str(tmp_path / "sharded"), device="cpu", dtype="float32", progress=False)
    assert sharded.generate([prompt], GREEDY)[0].token_ids[:6] == expected
    bf16_kv = LLM(
        model=str(tmp_path / "one"),
        device="cpu",
        dtype="float32",
        kv_cache_dtype="bfloat16",
        progress=False,
    )
    assert bf16_kv.engine.worker.runner.kv_caches[0].dtype == torch.bfloat16
    bf16_kv.engine.worker.runner.captured_logits = []
    bf16_kv.generate([prompt], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    for ours, ref in zip(bf16_kv.engine.worker.runner.captured_logits, ref_logits):
        torch.testing.assert_close(ours[0], ref, atol=2e-2, rtol=0)


def test_dummy_load_format_needs_only_config_json(tmp_path):
    build_tiny_model(tmp_path, "llama", seed=0)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    llm = LLM(model=str(tmp_path), device="cpu", load_format="dummy", progress=False)
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 4
