"""Speculative decoding end to end on a tiny random model (CPU): n-gram proposals verified in
one target pass give exactly the tokens of plain decoding, greedy or seeded, with penalties,
logit bias, logprobs, stops, streaming, preemption, abort and the prefix cache."""

from __future__ import annotations

import pytest

from minerva import LLM, SamplingParams
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_model
from tests.tokenizer_fixtures import build_byte_level

PROMPTS = [
    "the cat sat on the mat. the cat sat on the mat. the cat",
    "one two three four one two three four one two",
    "Hello, world! How are you today?",
    "abcabcabcabcabc",
    "a",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_spec")
    build_byte_level(path, vocab_size=500)
    tok = Tokenizer.from_folder(path)
    build_tiny_model(
        path, "llama", seed=11, vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id
    )
    return path


def make_llm(path, k=0, **kw) -> LLM:
    spec = dict(speculative_method="ngram", num_speculative_tokens=k) if k else {}
    spec |= {"speculative_adaptive": False} if k else {}  # speculate on every step
    common = dict(device="cpu", dtype="float32", block_size=4, progress=False)
    return LLM(model=str(path), **common, **spec, **kw)


@pytest.fixture(scope="module")
def plain(model_dir):
    return make_llm(model_dir)


@pytest.fixture(scope="module")
def spec4(model_dir):
    return make_llm(model_dir, 4)


def greedy(max_tokens=40, **kw):
    kw.setdefault("ignore_eos", True)
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def run_steps(llm: LLM, prompts, params) -> tuple[dict[str, list[int]], list]:
    """Step the engine by hand; returns tokens per request and every step's SchedulerOutput."""
    engine = llm.engine
    ids = [engine.add_request(p, params) for p in prompts]
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    steps = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
        steps.append(engine.last_scheduler_output)
    return tokens, steps


@pytest.mark.parametrize("k", [1, 4, 8])
def test_greedy_equals_plain_decoding_mixed_with_unspeculated_rows(model_dir, plain, k):
    llm = make_llm(model_dir, k)
    expected = [o.token_ids for o in plain.generate(PROMPTS, greedy())]
    tokens, steps = run_steps(llm, PROMPTS, greedy())
    assert list(tokens.values()) == expected
    stats = llm.engine.stats().spec_decode.as_dict()
    assert stats["num_accepted_tokens"] > 0 and stats["num_draft_tokens"] > 0
    assert max(len(d) for s in steps for d in s.scheduled_spec_token_ids.values()) == k
    # Some step verified drafts of one request next to a request with none.
    assert any(
        s.scheduled_spec_token_ids and len(s.scheduled_spec_token_ids) < s.num_seqs for s in steps
    )


def test_seeded_sampling_equals_plain_alone_and_in_a_batch(plain, spec4):
    params = [
        SamplingParams(max_tokens=40, temperature=t, top_p=tp, top_k=tk, seed=s, ignore_eos=True)
        for t, tp, tk, s in [(0.2, 1.0, 0, 1), (0.4, 0.9, 0, 2), (0.3, 1.0, 20, 3), (1.0, 1, 0, 4)]
    ]
    prompts = PROMPTS[:4]
    alone = [plain.generate(p, sp)[0].token_ids for p, sp in zip(prompts, params)]
    assert [o.token_ids for o in spec4.generate(prompts, params)] == alone
    assert [spec4.generate(p, sp)[0].token_ids for p, sp in zip(prompts, params)] == alone
    # Low temperatures: drafts both accepted and rejected.
    stats = spec4.engine.stats().spec_decode.as_dict()
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]


def test_penalties_bias_min_tokens_and_logprobs_see_the_accepted_drafts(plain, spec4):
    tok = spec4.engine.tokenizer
    params = [
        greedy(30, repetition_penalty=1.3, logprobs=3),
        greedy(30, frequency_penalty=0.4, presence_penalty=0.2),
        SamplingParams(max_tokens=30, temperature=0.9, seed=5, frequency_penalty=0.3),
        greedy(30, logit_bias={tok.encode(" cat")[-1]: 3.0}, min_tokens=10, ignore_eos=False),
    ]
    prompts = PROMPTS[:4]
    want = [plain.generate(p, sp)[0] for p, sp in zip(prompts, params)]
    got = spec4.generate(prompts, params)
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
    w_lp, g_lp = want[0].outputs[0].logprobs, got[0].outputs[0].logprobs
    assert len(g_lp) == len(w_lp) == 30
    for a, b in zip(w_lp, g_lp):
        assert (a.token_id, a.rank, a.top_token_ids) == (b.token_id, b.rank, b.top_token_ids)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_stop_strings_max_tokens_and_streaming(plain, spec4):
    full = plain.generate(PROMPTS[0], greedy(40))[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    want = plain.generate(PROMPTS[0], greedy(40, stop=[stop]))[0]
    got = spec4.generate(PROMPTS[0], greedy(40, stop=[stop]))[0]
    assert got.text == want.text and got.finish_reason == "stop"
    for n in (1, 2, 7):
        out = spec4.generate(PROMPTS[1], greedy(n))[0]
        assert out.token_ids == plain.generate(PROMPTS[1], greedy(n))[0].token_ids
        assert len(out.token_ids) == n and out.finish_reason == "length"
    deltas = list(spec4.stream(PROMPTS[3], greedy(40)))
    assert "".join(d.delta_text for d in deltas) == plain.generate(PROMPTS[3], greedy(40))[0].text
    assert max(len(d.delta_token_ids) for d in deltas) > 1  # several tokens in one step


def test_preemption_keeps_the_tokens(model_dir, plain):
    llm = make_llm(model_dir, 4, num_kv_blocks=26, max_model_len=96)
    expected = [o.token_ids for o in plain.generate(PROMPTS, greedy(48))]
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy(48))] == expected
    assert llm.engine.stats().num_preemptions > 0


def test_abort_mid_verification_frees_every_block(model_dir):
    llm = make_llm(model_dir, 4)
    engine = llm.engine
    kv = engine.kv_cache_manager
    free = kv.num_free_blocks
    ids = [engine.add_request(p, greedy(60)) for p in PROMPTS]
    while (
        not engine.last_scheduler_output
        or not engine.last_scheduler_output.scheduled_spec_token_ids
    ):
        engine.step()
    victim = next(iter(engine.last_scheduler_output.scheduled_spec_token_ids))
    engine.abort_request(victim.split("#")[0])
    engine.abort_request(ids[1])
    while engine.has_unfinished_requests():
        engine.step()
    assert kv.usage == 0.0 and kv.num_free_blocks == free


def test_prefix_cache_hits_after_speculation_give_plain_tokens(model_dir, spec4):
    cold = make_llm(model_dir, enable_prefix_caching=False)
    first = spec4.generate(PROMPTS[1], greedy(40))[0]
    follow_up = first.prompt_token_ids + first.token_ids + first.prompt_token_ids[:5]
    hit = spec4.generate(follow_up, greedy(20))[0]
    assert hit.num_cached_tokens > len(first.prompt_token_ids)
    assert hit.token_ids == cold.generate(follow_up, greedy(20))[0].token_ids


def test_async_scheduling_with_speculation(model_dir, plain):
    llm = make_llm(model_dir, 4, async_scheduling="on")
    expected = [o.token_ids for o in plain.generate(PROMPTS, greedy())]
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy())] == expected


class Alternate:
    """A governor that speculates on every third step only."""

    def __init__(self) -> None:
        self.calls = 0

    def should_speculate(self, num_rows: int) -> bool:
        self.calls += 1
        return self.calls % 3 == 0

    def observe(self, *args) -> None:
        pass


def test_plain_steps_of_a_speculating_engine_stay_asynchronous(model_dir, plain):
    llm = make_llm(model_dir, 4, async_scheduling="on")
    engine = llm.engine
    engine.speculator.governor = Alternate()
    events = []  # ("launch" | "read", step id, verifies drafts)
    launch, finish = engine.worker.launch, engine._finish

    def logged_launch(out):
        events.append(("launch", out.step_id, bool(out.scheduled_spec_token_ids)))
        return launch(out)

    def logged_finish(launched):
        events.append(("read", launched.out.step_id, bool(launched.out.scheduled_spec_token_ids)))
        finish(launched)

    engine.worker.launch, engine._finish = logged_launch, logged_finish
    got = [o.token_ids for o in llm.generate(PROMPTS, greedy())]
    assert got == [o.token_ids for o in plain.generate(PROMPTS, greedy())]
    read_at = {step: i for i, (kind, step, _) in enumerate(events) if kind == "read"}
    launches = [(i, step, spec) for i, (kind, step, spec) in enumerate(events) if kind == "launch"]
    overlapped = 0
    for (_, step, spec), (next_at, _, _) in zip(launches, launches[1:]):
        if spec:  # how many drafts were accepted decides the next step: read first
            assert read_at[step] < next_at
        overlapped += read_at[step] > next_at
    assert overlapped > 0 and any(spec for _, _, spec in launches)


def test_grammar_requests_beside_speculated_ones_keep_their_tokens(plain, spec4):
    from minerva.sampling_params import StructuredOutputs

    regex = SamplingParams(
        max_tokens=20, temperature=0.8, seed=4, structured=StructuredOutputs(regex=r"\d{3}-\d{2}")
    )
    params = [regex, greedy(30), regex, greedy(30)]
    want = [plain.generate(p, sp)[0].token_ids for p, sp in zip(PROMPTS, params)]
    _, steps = run_steps(spec4, PROMPTS[:4], params[0])  # every one a grammar row: no drafts
    assert all(not s.scheduled_spec_token_ids for s in steps)
    got = spec4.generate(PROMPTS[:4], params)
    assert [o.token_ids for o in got] == want
    assert got[0].outputs[0].text[3] == "-"


def test_grammar_rows_of_an_async_speculating_engine_keep_their_tokens(model_dir, plain):
    """Async scheduling with a governor that keeps most steps plain: grammar rows are launched
    before the step in flight is read (their sampling after it) on the plain steps, beside rows
    that verify drafts on the others, and keep the tokens of plain decoding."""
    from minerva.sampling_params import StructuredOutputs

    llm = make_llm(model_dir, 4, async_scheduling="on")
    llm.engine.speculator.governor = Alternate()
    deferred = []
    sample = llm.engine.worker.sample

    def counted(step):
        deferred.append(not step.sampled)
        return sample(step)

    llm.engine.worker.sample = counted
    regex = SamplingParams(
        max_tokens=20, temperature=0.8, seed=4, structured=StructuredOutputs(regex=r"\d{3}-\d{2}")
    )
    params = [regex, greedy(30), regex, greedy(30)]
    want = [plain.generate(p, sp)[0].token_ids for p, sp in zip(PROMPTS, params)]
    got = llm.generate(PROMPTS[:4], params)
    assert [o.token_ids for o in got] == want
    assert any(deferred) and llm.engine.stats().spec_decode.num_draft_tokens > 0
