"""Constrained decoding and token healing inside the engine (demo model): a grammar request
draws the same tokens alone, in a mixed batch, under async scheduling and after preemption;
token healing re-spells the backed-up text exactly once."""

from __future__ import annotations

import json
import threading

import pytest

from minerva import LLM, SamplingParams
from minerva.demo import demo_model_path
from minerva.errors import RequestError
from minerva.sampling_params import StructuredOutputs
from minerva.structured import heal_prompt

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["a", "b", "c"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["id", "kind", "tags"],
    "additionalProperties": False,
}
JSON = StructuredOutputs(json_schema=SCHEMA)
PROMPT = "<|user|>\nGive me a record.</s>\n<|assistant|>\n"


def _llm(**kw) -> LLM:
    return LLM(model=str(demo_model_path()), device="cpu", dtype="float32", progress=False, **kw)


@pytest.fixture(scope="module", params=["off", "on"], ids=["sync", "async"])
def llm(request):
    return _llm(async_scheduling=request.param, block_size=4)


def _json(seed: int, **kw) -> SamplingParams:
    kw = {"max_tokens": 80, **kw}
    return SamplingParams(temperature=1.0, seed=seed, structured=JSON, **kw)


def test_grammar_rows_keep_the_seeded_tokens_in_any_batch(llm):
    alone = [llm.generate([PROMPT], _json(s))[0].outputs[0] for s in (1, 2)]
    for out in alone:
        assert out.finish_reason == "stop"
        assert set(json.loads(out.text)) == {"id", "kind", "tags"}
    mixed = llm.generate(
        [PROMPT, "Once upon a time", PROMPT, "Hello"],
        [
            _json(1),
            SamplingParams(temperature=1.0, seed=9, max_tokens=30),
            _json(2),
            SamplingParams(temperature=0.8, seed=3, max_tokens=20, presence_penalty=0.5),
        ],
    )
    assert [mixed[0].outputs[0].token_ids, mixed[2].outputs[0].token_ids] == [
        a.token_ids for a in alone
    ]


@pytest.mark.parametrize("mode", ["off", "on"], ids=["sync", "async"])
def test_a_preempted_grammar_request_resumes_its_matcher(mode):
    reference = _llm(block_size=4)
    expected = [reference.generate([PROMPT], _json(s))[0].outputs[0].text for s in range(4)]
    # Four requests need more than 25 blocks of 4 tokens: some get preempted and resumed.
    tight = _llm(block_size=4, num_kv_blocks=26, max_model_len=96, async_scheduling=mode)
    outs = tight.generate([PROMPT] * 4, [_json(s) for s in range(4)])
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].text for o in outs] == expected


def test_greedy_choice_and_regex(llm):
    choice = SamplingParams(temperature=0, structured=StructuredOutputs(choice=["yes", "no"]))
    regex = SamplingParams(
        temperature=1.0, seed=4, max_tokens=20, structured=StructuredOutputs(regex=r"\d{3}-\d{2}")
    )
    assert llm.generate(["Answer:"], choice)[0].outputs[0].text in ("yes", "no")
    out = llm.generate(["Code:"], regex)[0].outputs[0]
    assert out.finish_reason == "stop" and len(out.text) == 6 and out.text[3] == "-"


def test_bad_constraints_are_refused_when_added(llm):
    with pytest.raises(RequestError, match="invalid JSON schema"):
        llm.engine.add_request(
            "x", SamplingParams(structured=StructuredOutputs(json_schema={"type": 1}))
        )
    with pytest.raises(RequestError, match="token_healing cannot be combined"):
        llm.engine.add_request("x", SamplingParams(structured=JSON, token_healing=True))
    assert not llm.engine.has_unfinished_requests()


MID_TOKEN = ["def hello_wor", 'print("hel']


@pytest.mark.parametrize("prompt", MID_TOKEN)
def test_token_healing_respells_the_removed_text_once(llm, prompt):
    tok, vocab = llm.tokenizer, llm.engine.constraints.vocabulary
    ids = tok.encode(prompt)
    healed = heal_prompt(ids, vocab)
    assert healed.removed_bytes and healed.prompt_token_ids == ids[: len(healed.prompt_token_ids)]
    for params in (
        SamplingParams(temperature=0, max_tokens=6, token_healing=True),
        SamplingParams(temperature=1.0, seed=5, max_tokens=6, token_healing=True),
    ):
        out = llm.generate([prompt], params)[0]
        comp = out.outputs[0]
        assert out.prompt_token_ids == healed.prompt_token_ids
        # Never repeated, never lost: the healed prompt plus the output is the prompt plus text.
        assert tok.decode(healed.prompt_token_ids + comp.token_ids) == prompt + comp.text
        spelled = b"".join(vocab.token_bytes[t] for t in comp.token_ids)
        assert spelled.startswith(healed.removed_bytes)
        streamed = "".join(c.delta_text for c in llm.stream(prompt, params))
        assert streamed == comp.text


def test_token_healing_is_off_by_default_and_leaves_whole_tokens(llm):
    assert SamplingParams().token_healing is False
    out = llm.generate(["Hello world"], SamplingParams(temperature=0, max_tokens=4))[0]
    healed = llm.generate(
        ["Hello world"], SamplingParams(temperature=0, max_tokens=4, token_healing=True)
    )[0]
    assert healed.outputs[0].token_ids == out.outputs[0].token_ids  # nothing to heal


def test_masks_filled_early_on_their_thread_give_the_same_tokens(monkeypatch, llm):
    """Early masks (TokenMasks.early, on by default on CUDA) fill a step's grammar masks on
    the mask thread while the forward runs: the same seeded tokens as filling them after it."""
    from minerva.runner import token_masks

    runner = llm.engine.worker.runner
    prompts = [PROMPT, "Hello", PROMPT]
    params = [_json(4), SamplingParams(temperature=1.0, seed=5, max_tokens=12), _json(6)]
    assert runner.masks.early is False  # the CPU default
    after = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    threads: list[str] = []

    def recorded(matchers, vocab_size):
        threads.append(threading.current_thread().name)
        return fill_bitmask(matchers, vocab_size)

    fill_bitmask = token_masks.fill_bitmask
    monkeypatch.setattr(token_masks, "fill_bitmask", recorded)
    monkeypatch.setattr(runner.masks, "early", True)
    early = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert early == after
    assert threads and all(name.startswith("minerva-masks") for name in threads)


# -- grammar rows under async scheduling: the next forward is queued before the step is read --
REGEX = StructuredOutputs(regex=r"\d{3}-\d{2}")
CHOICE = StructuredOutputs(choice=["yes", "no", "maybe so"])


@pytest.fixture(scope="module")
def pair():
    """The same engine without and with async scheduling (the CPU's async path is the GPU's)."""
    return _llm(async_scheduling="off", block_size=4), _llm(async_scheduling="on", block_size=4)


def _outputs(llm: LLM, prompts, params) -> list[tuple]:
    return [
        (o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason)
        for o in llm.generate(prompts, params)
    ]


def _mixed_batch() -> tuple[list[str], list[SamplingParams]]:
    """Grammar rows (seeded at temperature 1, greedy, ending by the grammar, by max_tokens
    and by a stop string) among free rows (seeded, greedy)."""
    rows = [
        (PROMPT, _json(1)),
        ("Once upon a time", SamplingParams(temperature=1.0, seed=9, max_tokens=30)),
        ("Code:", SamplingParams(temperature=1.0, seed=4, max_tokens=20, structured=REGEX)),
        (PROMPT, _json(2, max_tokens=7)),
        ("Hello", SamplingParams(temperature=0, max_tokens=25)),
        ("Answer:", SamplingParams(temperature=0, structured=CHOICE)),
        (PROMPT, SamplingParams(temperature=0, max_tokens=80, structured=JSON)),
        (PROMPT, _json(3, stop=['"kind"'])),
        (PROMPT, _json(5)),
    ]
    return [p for p, _ in rows], [sp for _, sp in rows]


def test_async_grammar_rows_give_the_tokens_of_sync_ones(pair):
    sync, async_ = pair
    prompts, params = _mixed_batch()
    want = _outputs(sync, prompts, params)
    got = _outputs(async_, prompts, params)
    assert got == want
    reasons = [r for _, _, r in want]
    assert reasons[3] == "length" and reasons[7] == "stop" and '"kind"' not in want[7][1]
    assert want[2][2] == "stop" and len(want[2][1]) == 6  # the regex ended the request
    assert want[5][1] in ("yes", "no", "maybe so")
    for i in (0, 6, 8):
        assert reasons[i] == "stop" and set(json.loads(want[i][1])) == {"id", "kind", "tags"}


def test_grammar_steps_are_launched_before_the_previous_one_is_read(pair):
    """Every row has a grammar: the next step's forward is still queued before the previous
    step is read, and its sampling after; a row whose grammar ended while the next step was in
    flight drops that step's token (the outputs equal the synchronous engine's)."""
    sync, async_ = pair
    engine = async_.engine
    events = []  # ("launch" | "sample" | "read", step id)
    dropped = []  # tokens of rows that had ended by the time their step was read
    launch, sample, finish = engine.worker.launch, engine.worker.sample, engine._finish
    update = engine.scheduler.update

    def logged_launch(out):
        events.append(("launch", out.step_id))
        return launch(out)

    def logged_sample(step):
        events.append(("sample", step.out.step_id))
        return sample(step)

    def logged_finish(launched):
        events.append(("read", launched.out.step_id))
        return finish(launched)

    def logged_update(out, sampled):
        requests = engine.scheduler._in_flight.get(out.step_id, ())
        dropped.extend(t for r, t in zip(requests, sampled) if r.is_finished and t)
        return update(out, sampled)

    engine.worker.launch, engine.worker.sample = logged_launch, logged_sample
    engine._finish, engine.scheduler.update = logged_finish, logged_update
    prompts = [PROMPT, "Code:", PROMPT, "Answer:"]
    params = [
        _json(1),
        SamplingParams(temperature=1.0, seed=4, max_tokens=20, structured=REGEX),
        _json(2),
        SamplingParams(temperature=0, structured=CHOICE),
    ]
    try:
        got = _outputs(async_, prompts, params)
    finally:
        del engine.worker.launch, engine.worker.sample, engine._finish, engine.scheduler.update
    assert got == _outputs(sync, prompts, params)
    at = {(kind, step): i for i, (kind, step) in enumerate(events)}
    launches = [step for kind, step in events if kind == "launch"]
    overlapped = [(a, b) for a, b in zip(launches, launches[1:]) if at["launch", b] < at["read", a]]
    assert len(overlapped) > len(launches) // 2
    for a, b in overlapped:  # b's masks follow a's tokens: sampled once a is read
        assert at["read", a] < at["sample", b]
    assert dropped  # a request ended while its next step was in flight
    assert engine.worker.runner._waiting is None  # no sampling left behind


def test_aborting_a_grammar_request_mid_stream_under_async(pair):
    sync, async_ = pair
    prompts = [PROMPT, "Once upon a time", PROMPT]
    params = [_json(1), SamplingParams(temperature=1.0, seed=9, max_tokens=30), _json(2)]
    want = _outputs(sync, prompts, params)
    engine = async_.engine
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    finished: dict[str, str] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = out.outputs[0].token_ids
            if out.finished:
                finished[out.request_id] = out.outputs[0].finish_reason
        steps += 1
        if steps == 6:
            engine.abort_request(ids[0])
    assert finished[ids[0]] == "abort"
    assert 0 < len(tokens[ids[0]]) < len(want[0][0])
    assert tokens[ids[0]] == want[0][0][: len(tokens[ids[0]])]
    assert [tokens[ids[1]], tokens[ids[2]]] == [want[1][0], want[2][0]]
    assert engine.worker.runner._waiting is None  # no sampling left behind


def test_a_waiting_sampling_is_refused_before_the_step_before_is_read(pair):
    """The runner samples a grammar step launched over an unread step only once that step is
    read (its masks would follow stale matchers otherwise); in that order the tokens hold."""
    sync, async_ = pair
    want = _outputs(sync, [PROMPT], [_json(1)])[0][0]
    engine = async_.engine
    rid = engine.add_request(PROMPT, _json(1))
    outputs = engine.step() + engine.step()  # the prefill, then a decode step left in flight
    inflight = engine._inflight
    launched = engine.worker.launch(engine.scheduler.schedule())
    assert inflight is not None and not launched.sampled  # its row's last token is unread
    with pytest.raises(RuntimeError, match="previous step read first"):
        engine.worker.sample(launched)
    engine._finish(inflight)
    engine.worker.sample(launched)
    engine._inflight = launched
    while engine.has_unfinished_requests():
        outputs += engine.step()
    outputs += engine.output_processor.collect()
    final = [o for o in outputs if o.request_id == rid][-1]
    assert final.finished and final.outputs[0].token_ids == want
