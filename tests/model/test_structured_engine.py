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
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=80, structured=JSON, **kw)


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


def test_a_preempted_grammar_request_resumes_its_matcher():
    reference = _llm(block_size=4)
    expected = [reference.generate([PROMPT], _json(s))[0].outputs[0].text for s in range(4)]
    # Four requests need more than 25 blocks of 4 tokens: some get preempted and resumed.
    tight = _llm(block_size=4, num_kv_blocks=26, max_model_len=96)
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
