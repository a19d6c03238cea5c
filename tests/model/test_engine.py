"""Engine behaviour on a tiny random model with a real tokenizer: text, stops, seeds, n, abort."""

from __future__ import annotations

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.errors import RequestError
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_model, hf_greedy
from tests.tokenizer_fixtures import build_byte_level

PROMPTS = [
    "The quick brown fox",
    "Hello, world! How are you today?",
    "café naïve — 東京 🙂",
    "a",
    "Once upon a time in a land far away there lived",
    "1 2 3 4 5 6 7 8 9",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_text")
    build_byte_level(path, vocab_size=500)
    tok = Tokenizer.from_folder(path)
    hf = build_tiny_model(
        path, "llama", seed=5, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id
    )
    return path, hf, tok


@pytest.fixture(scope="module", params=["off", "on"], ids=["sync", "async"])
def llm(model_dir, request):
    """Every engine test runs with and without async scheduling (queue N+1, then read N)."""
    path, _, _ = model_dir
    return LLM(
        model=str(path),
        device="cpu",
        dtype="float32",
        block_size=4,
        async_scheduling=request.param,
        progress=False,
    )


def greedy(max_tokens=16, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def test_text_prompts_match_transformers(llm, model_dir):
    _, hf, tok = model_dir
    outs = llm.generate(PROMPTS, greedy(ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.token_ids == hf_greedy(hf, ids, 16)[0]
        assert out.text == tok.decode(out.token_ids)


def test_stop_string_truncates_and_never_leaks(llm):
    full = llm.generate(PROMPTS[0], greedy(32, ignore_eos=True))[0]
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop
    out = llm.generate(PROMPTS[0], greedy(32, ignore_eos=True, stop=[stop]))[0]
    assert out.text == text[: text.index(stop)]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop
    kept = llm.generate(
        PROMPTS[0], greedy(32, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
    )[0]
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_streamed_deltas_concatenate_to_text(llm):
    deltas = list(llm.stream(PROMPTS[2], greedy(24, ignore_eos=True)))
    full = llm.generate(PROMPTS[2], greedy(24, ignore_eos=True))[0]
    assert "".join(d.delta_text for d in deltas) == full.text
    assert [t for d in deltas for t in d.delta_token_ids] == full.token_ids
    assert deltas[-1].finish_reason == "length"


def test_stop_token_ids_and_min_tokens(llm):
    base = llm.generate(PROMPTS[1], greedy(20, ignore_eos=True))[0].token_ids
    stop_tok = base[4]
    out = llm.generate(PROMPTS[1], greedy(20, ignore_eos=True, stop_token_ids=[stop_tok]))[0]
    first = base.index(stop_tok)
    assert out.token_ids == base[: first + 1]
    assert out.finish_reason == "stop" and out.outputs[0].stop_reason == stop_tok
    held = llm.generate(
        PROMPTS[1], greedy(20, ignore_eos=True, stop_token_ids=[stop_tok], min_tokens=8)
    )[0]
    assert stop_tok not in held.token_ids[:8]
    assert len(held.token_ids) >= 8


def test_eos_stops_unless_ignored(model_dir):
    path, hf, tok = model_dir
    llm = LLM(model=str(path), device="cpu", dtype="float32", progress=False)
    ids = tok.encode(PROMPTS[4])
    ref = hf_greedy(hf, ids, 12)[0]
    eos = ref[3]  # make the 4th greedy token the end of sequence
    llm.engine.eos_token_ids = [eos]
    out = llm.generate([ids], greedy(12))[0]
    assert out.token_ids == ref[: ref.index(eos) + 1] and out.finish_reason == "stop"
    out = llm.generate([ids], greedy(12, ignore_eos=True))[0]
    assert out.token_ids == ref and out.finish_reason == "length"


def test_repetition_penalty_matches_slow_twin(llm, model_dir):
    _, hf, tok = model_dir
    ids = tok.encode(PROMPTS[4])
    ref = hf_greedy(hf, ids, 16, repetition_penalty=1.5)[0]
    assert ref != hf_greedy(hf, ids, 16)[0]  # the penalty changes this output
    out = llm.generate([ids], greedy(16, ignore_eos=True, repetition_penalty=1.5))[0]
    assert out.token_ids == ref


def test_seeded_sampling_ignores_the_batch(llm):
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], params)[0].token_ids
    others = [
        SamplingParams(max_tokens=20, temperature=0.8, seed=s, ignore_eos=True) for s in range(5)
    ]
    batch = llm.generate(PROMPTS[1:] + [PROMPTS[0]], others + [params])
    assert batch[-1].token_ids == alone
    again = llm.generate(PROMPTS[0], params)[0].token_ids
    assert again == alone
    other_seed = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, seed=99, ignore_eos=True))[
        0
    ]
    assert other_seed.token_ids != alone


def test_n_completions_differ_and_are_reproducible(llm):
    params = SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    out = llm.generate(PROMPTS[3], params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    seqs = [tuple(c.token_ids) for c in out.outputs]
    assert len(set(seqs)) == 3
    assert [tuple(c.token_ids) for c in llm.generate(PROMPTS[3], params)[0].outputs] == seqs


def test_unstreamed_request_reports_once_what_the_stream_adds_up_to(llm):
    """stream=False (what generate() uses): step() reports the request once, finished, with
    every completion as the streamed twin ends (n > 1 finishing at different steps, a stop
    string, different lengths)."""
    engine = llm.engine
    cases = [
        SamplingParams(n=3, max_tokens=12, temperature=1.0, seed=7),
        SamplingParams(max_tokens=20, temperature=0.0, stop=["e"]),
        greedy(5, ignore_eos=True),
    ]
    pairs = [
        (engine.add_request(PROMPTS[i], p), engine.add_request(PROMPTS[i], p, stream=False))
        for i, p in enumerate(cases)
    ]
    reports: dict[str, list] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            reports.setdefault(out.request_id, []).append(out)
    for streamed_id, quiet_id in pairs:
        (quiet,) = reports[quiet_id]
        assert quiet.finished
        final = {}
        for out in reports[streamed_id]:
            final |= {c.index: c for c in out.outputs}
        assert [c.index for c in quiet.outputs] == sorted(final)
        for c in quiet.outputs:
            ref = final[c.index]
            assert (c.token_ids, c.text, c.finish_reason) == (
                ref.token_ids, ref.text, ref.finish_reason
            )  # fmt: skip
            assert c.delta_text == c.text and c.delta_token_ids == c.token_ids


def test_logprobs_match_transformers(llm, model_dir):
    _, hf, tok = model_dir
    ids = tok.encode(PROMPTS[5])
    out = llm.generate([ids], greedy(6, ignore_eos=True, logprobs=5))[0]
    _, ref_logits = hf_greedy(hf, ids, 6)
    lps = out.outputs[0].logprobs
    assert len(lps) == 6
    for lp, logits in zip(lps, ref_logits):
        ref = torch.log_softmax(logits, -1)
        top = torch.topk(ref, 5)
        assert lp.rank == 1
        assert lp.logprob == pytest.approx(ref[lp.token_id].item(), abs=1e-4)
        assert lp.top_token_ids == top.indices.tolist()
        assert lp.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-4)


def test_context_length_refused_not_truncated(model_dir):
    path, _, _ = model_dir
    llm = LLM(model=str(path), device="cpu", dtype="float32", max_model_len=32, progress=False)
    with pytest.raises(RequestError) as e:
        llm.generate([list(range(3, 30))], greedy(10))
    assert e.value.code == "context_length_exceeded" and "32" in str(e.value)
    out = llm.generate(
        [list(range(3, 30))], SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    )[0]
    assert len(out.token_ids) == 32 - 27 and out.finish_reason == "length"


def test_abort_frees_blocks_at_any_point(llm):
    engine = llm.engine
    kv = engine.kv_cache_manager
    free_before = kv.num_free_blocks
    ids = [engine.add_request(p, greedy(50, ignore_eos=True)) for p in PROMPTS]
    engine.step()  # some prefill, some still waiting
    engine.abort_request(ids[:3])
    for _ in range(3):
        engine.step()
    engine.abort_request(ids[3:])
    outs = engine.step()
    assert not engine.has_unfinished_requests()
    assert kv.num_free_blocks == free_before
    assert {o.finish_reason for o in outs if o.finished} <= {"abort"}


def test_score_matches_transformers_and_frees_blocks(llm, model_dir):
    _, hf, tok = model_dir
    ids = tok.encode(PROMPTS[4] + " " + PROMPTS[1])
    kv = llm.engine.kv_cache_manager
    free = kv.num_free_blocks
    ours = torch.tensor(llm.engine.score(ids))
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1)
    ref = ref.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert kv.num_free_blocks == free
    with pytest.raises(RequestError):
        llm.engine.score(ids[:1])
    with pytest.raises(RequestError, match="outside the vocabulary"):
        llm.engine.score([ids[0], 10**6])  # every id is checked, not only the first
    assert kv.num_free_blocks == free
