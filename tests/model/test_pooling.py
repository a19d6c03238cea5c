"""Pooling requests (embeddings) through the engine: vectors vs transformers' hidden states,
batched vs single, next to generation requests, chunked prefill, prefix cache, freed blocks."""

from __future__ import annotations

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.errors import RequestError
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_model
from tests.tokenizer_fixtures import build_byte_level

PROMPTS = [
    "The quick brown fox jumps over the lazy dog",
    "a",
    "Once upon a time in a land far away there lived a king",
    "café naïve — 東京 🙂",
]
POOL = SamplingParams(pooling="mean")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_pool")
    build_byte_level(path, vocab_size=500)
    tok = Tokenizer.from_folder(path)
    hf = build_tiny_model(
        path, "llama", seed=7, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id
    )
    return path, hf, tok


def make_llm(path, **kw) -> LLM:
    return LLM(model=str(path), device="cpu", dtype="float32", block_size=4, progress=False, **kw)


@pytest.fixture(scope="module", params=["off", "on"], ids=["sync", "async"])
def llm(model_dir, request):
    return make_llm(model_dir[0], async_scheduling=request.param)


def reference(hf, ids: list[int]) -> torch.Tensor:
    """transformers: the base model's last hidden state (after the final norm), mean-pooled."""
    with torch.no_grad():
        hidden = hf.model(torch.tensor([ids])).last_hidden_state[0].float()  # [T, hidden]
    return torch.nn.functional.normalize(hidden.mean(0), dim=0)


def test_vectors_match_transformers_batched_and_single(llm, model_dir):
    _, hf, tok = model_dir
    kv = llm.engine.kv_cache_manager
    free = kv.num_free_blocks
    batched = llm.embed(PROMPTS)
    for prompt, vec in zip(PROMPTS, batched):
        ours = torch.tensor(vec)
        torch.testing.assert_close(ours, reference(hf, tok.encode(prompt)), atol=1e-5, rtol=0)
        assert abs(ours.norm().item() - 1) < 1e-5
        (single,) = llm.embed([prompt])
        torch.testing.assert_close(torch.tensor(single), ours, atol=1e-5, rtol=0)
    assert kv.num_free_blocks == free  # every pooling request gave its blocks back


def test_pooling_next_to_generation_changes_neither(llm, model_dir):
    _, hf, tok = model_dir
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = llm.generate(PROMPTS[:2], greedy)
    engine = llm.engine
    gen_ids = [engine.add_request(p, greedy, stream=False) for p in PROMPTS[:2]]
    engine.step()  # the generations are running when the pooling requests arrive
    pool_ids = [engine.add_request(p, POOL, stream=False) for p in PROMPTS]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    for rid, ref in zip(gen_ids, alone):
        assert done[rid].token_ids == ref.token_ids and done[rid].embedding is None
    for rid, prompt in zip(pool_ids, PROMPTS):
        out = done[rid]
        assert out.outputs[0].token_ids == [] and out.finish_reason == "stop"
        ref = reference(hf, tok.encode(prompt))
        torch.testing.assert_close(torch.tensor(out.embedding), ref, atol=1e-5, rtol=0)


def test_chunked_prefill_and_prefix_cache_give_the_same_vector(model_dir):
    _, hf, tok = model_dir
    prompt = PROMPTS[2] + " " + PROMPTS[0]
    ref = reference(hf, tok.encode(prompt))
    # A budget of 5 tokens splits the prompt over several steps; the second request's leading
    # blocks are in the prefix cache, which pooling must not use (it needs every hidden state).
    llm = make_llm(model_dir[0], max_num_batched_tokens=5, enable_prefix_caching=True)
    llm.generate([prompt], SamplingParams(max_tokens=2, temperature=0.0))
    for vec in llm.embed([prompt, prompt]):
        torch.testing.assert_close(torch.tensor(vec), ref, atol=1e-5, rtol=0)


def test_pooling_refuses_what_it_cannot_do(llm):
    with pytest.raises(ValueError, match="pooling requests generate nothing"):
        SamplingParams(pooling="mean", n=2)
    with pytest.raises(ValueError, match="pooling must be"):
        SamplingParams(pooling="cls")
    too_long = [1] * (llm.engine.max_model_len + 1)
    with pytest.raises(RequestError, match="maximum context length"):
        llm.engine.add_request(too_long, POOL)
    exact = llm.engine.max_model_len  # a pooling prompt may fill the whole context
    engine = llm.engine
    rid = engine.add_request([1] * exact, POOL, stream=False)
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.request_id == rid and o.finished]
    assert len(outs[0].embedding) == engine.model_config.hidden_size
