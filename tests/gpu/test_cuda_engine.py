"""The engine on a CUDA GPU against transformers (skipped without one; run on the device)."""

from __future__ import annotations

import gc
import random

import pytest
import torch

from minerva import LLM, SamplingParams
from tests.tiny_models import VOCAB, build_tiny_model, hf_greedy

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda_tiny")
    hf = build_tiny_model(path, "mistral", seed=2, sliding_window=12)
    return path, hf


def _prompts(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(5, 40))] for _ in range(n)]


def test_fp32_logits_match_transformers(tiny):
    path, hf = tiny
    prompt = _prompts(1, 5)[0] + list(range(3, 20))
    llm = LLM(model=str(path), device="cuda", dtype="float32", block_size=16, progress=False)
    llm.engine.worker.runner.captured_logits = []
    out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    ref_tokens, ref_logits = hf_greedy(hf, prompt, 8)
    assert out.token_ids == ref_tokens
    for ours, ref in zip(llm.engine.worker.runner.captured_logits, ref_logits):
        torch.testing.assert_close(ours[0], ref, atol=1e-3, rtol=0)


def test_batch_equals_single_fp32(tiny):
    path, hf = tiny
    prompts = _prompts(8, 9)
    llm = LLM(
        model=str(path), device="cuda", dtype="float32", max_num_batched_tokens=32, progress=False
    )
    outs = llm.generate(prompts, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    assert [o.token_ids for o in outs] == [hf_greedy(hf, p, 10)[0] for p in prompts]


def test_bf16_close_to_fp32_reference(tiny):
    path, hf = tiny
    prompt = _prompts(1, 3)[0]
    llm = LLM(model=str(path), device="cuda", dtype="bfloat16", progress=False)
    llm.engine.worker.runner.captured_logits = []
    llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))
    ref = hf_greedy(hf, prompt, 1)[1][0]
    torch.testing.assert_close(
        llm.engine.worker.runner.captured_logits[0][0], ref, atol=5e-2, rtol=5e-2
    )


def test_seeded_sampling_same_alone_and_batched(tiny):
    path, _ = tiny
    llm = LLM(model=str(path), device="cuda", dtype="float32", progress=False)
    p = SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=42, ignore_eos=True)
    prompts = _prompts(5, 1)
    alone = llm.generate([prompts[0]], p)[0].token_ids
    batch = llm.generate(prompts, [p] + [SamplingParams(max_tokens=12, seed=i) for i in range(4)])
    assert batch[0].token_ids == alone


def _run_capturing(llm, prompts, params):
    llm.engine.worker.runner.captured_logits = []
    outs = llm.generate(prompts, params)
    return [o.token_ids for o in outs], llm.engine.worker.runner.captured_logits


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-4), ("bfloat16", 6e-2)])
def test_cuda_graphs_equal_eager_and_torch_reference(tiny, dtype, atol):
    """Graph replay + fused kernels vs eager vs the torch reference (attention and glue)."""
    path, _ = tiny
    prompts = _prompts(6, 17)
    # bf16 runs may pick different tokens at near-ties, after which logits are not comparable:
    # compare the prefill and the first (graph-replayed) decode step there.
    steps = 12 if dtype == "float32" else 2
    params = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    runs = {}
    for name, kw in {
        "graphs": {},
        "graphs-plain-launch": dict(pdl=False),
        "eager": dict(enforce_eager=True),
        "torch": dict(attention_backend="torch"),
    }.items():
        llm = LLM(model=str(path), device="cuda", dtype=dtype, max_num_seqs=8, progress=False, **kw)
        assert (llm.engine.worker.runner.graphs is not None) == name.startswith("graphs")
        if name.startswith("graphs"):  # PDL (Hopper) in the graphs unless switched off
            worker = llm.engine.worker
            pdl = name == "graphs" and llm.engine.platform.supports_pdl
            assert worker.kernels.pdl == worker.attention.pdl == pdl
            assert worker.kernels.name == "triton" and worker.model.one_token
        runs[name] = _run_capturing(llm, prompts, params)
    tokens, logits = runs["graphs"]
    for other in ("graphs-plain-launch", "eager", "torch"):
        other_tokens, other_logits = runs[other]
        if dtype == "float32":
            assert other_tokens == tokens
        elif [t[0] for t in other_tokens] != [t[0] for t in tokens]:
            other_logits = other_logits[:1]  # first tokens differ: only the prefill compares
        for a, b in zip(logits, other_logits):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_async_scheduling_equals_transformers(tiny, mode):
    """Queue step N+1 before reading N (graphs, chunked prefill, requests ending at different
    steps so the batch keeps changing) and still equal transformers token for token."""
    path, hf = tiny
    prompts = _prompts(8, 23)
    lengths = [3, 14, 7, 1, 10, 5, 12, 2]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    llm = LLM(
        model=str(path),
        device="cuda",
        dtype="float32",
        max_num_batched_tokens=32,
        async_scheduling=mode,
        progress=False,
    )
    assert llm.engine.async_scheduling == (mode == "on")
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == [hf_greedy(hf, p, n)[0] for p, n in zip(prompts, lengths)]
    kv = llm.engine.kv_cache_manager
    assert kv.num_free_blocks == kv.num_blocks - 1


def test_measured_activation_reserve_bounds_the_peak(tiny):
    """The KV cache is sized after profiling a step at the scheduler's limits: running such
    steps never holds more than weights + KV cache + that reserve."""
    path, _ = tiny
    gc.collect()  # engines of earlier tests still hold memory: measure above what is there
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    llm = LLM(
        model=str(path),
        device="cuda",
        dtype="bfloat16",
        max_num_batched_tokens=512,
        max_num_seqs=32,
        max_model_len=256,
        progress=False,
    )
    loaded = llm.engine.worker
    assert loaded.activation_reserve > 0
    torch.cuda.reset_peak_memory_stats()
    params = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, logprobs=3, seed=1)
    llm.generate([[5 + i % 200] * 200 for i in range(32)], params)
    peak = torch.cuda.max_memory_allocated() - base
    bound = loaded.weight_bytes + loaded.kv_cache_bytes + loaded.activation_reserve
    assert peak <= bound + (32 << 20), (peak, bound)


def test_one_sequence_prefill_graphs_equal_transformers(tiny):
    """Single-prompt steps replay the prefill graphs (whole prompt, chunks of it, the tail after
    a prefix-cache hit) and still equal transformers token for token."""
    path, hf = tiny
    llm = LLM(
        model=str(path),
        device="cuda",
        dtype="float32",
        block_size=8,
        max_num_batched_tokens=64,  # a 90-token prompt prefills in two chunks
        progress=False,
    )
    prefill = llm.engine.worker.runner.prefill_graphs
    assert prefill is not None and prefill.buckets == [64]
    base = list(range(3, 93))
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    for prompt in ([5, 6, 7], base, base[:60] + [9, 9, 9]):  # the last one hits the cache
        before = prefill.num_replays
        out = llm.generate([prompt], params)[0]
        assert out.token_ids == hf_greedy(hf, prompt, 6)[0]
        assert prefill.num_replays > before
    assert llm.engine.kv_cache_manager.prefix_cache_hits > 0


def test_qwen3_graphs_match_transformers(tmp_path):
    """Qwen3's per-head q / k norms through the CUDA path: the batch-1 step with the glue in
    the GEMVs (graph-replayed) and batched steps, against transformers."""
    hf = build_tiny_model(tmp_path, "qwen3", seed=4, head_dim=32, attention_bias=True)
    llm = LLM(model=str(tmp_path), device="cuda", dtype="float32", max_num_seqs=8, progress=False)
    assert llm.engine.worker.model.one_token and llm.engine.worker.runner.graphs is not None
    prompts = _prompts(4, 23)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    tokens, logits = _run_capturing(llm, prompts[:1], params)
    ref_tokens, ref_logits = hf_greedy(hf, prompts[0], 6)
    assert tokens[0] == ref_tokens and len(logits) == 6
    for step, (ours, ref) in enumerate(zip(logits, ref_logits)):
        torch.testing.assert_close(ours[0], ref, atol=1e-3, rtol=0, msg=f"step {step}")
    tokens, _ = _run_capturing(llm, prompts, params)
    assert tokens == [hf_greedy(hf, p, 6)[0] for p in prompts]
