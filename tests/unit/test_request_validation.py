"""Every field a request carries is checked when the engine accepts it: a bad one raises
RequestError from add_request (LLMEngine and AsyncEngine), never on the engine thread, and
the engine keeps serving valid requests afterwards with the same tokens as before."""

from __future__ import annotations

import asyncio

import pytest

from minerva.config import EngineConfig
from minerva.engine.async_engine import AsyncEngine
from minerva.engine.llm_engine import LLMEngine
from minerva.engine.request_validation import validate_request
from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams
from tests.e2e.tiny_server_model import VOCAB, build_server_model

PROMPT = [1, 20, 30, 40, 50]
MAX_LEN = 64


def mutated(**fields) -> SamplingParams:
    """Params whose fields were changed after construction (skipping SamplingParams' checks),
    as a caller holding the object can."""
    params = SamplingParams(max_tokens=4, temperature=0)
    for name, value in fields.items():
        setattr(params, name, value)
    return params


# (prompt ids, params, the param the error names)
INVALID = {
    "logit_bias id past the vocab": (PROMPT, SamplingParams(logit_bias={VOCAB: 5.0}), "logit_bias"),
    "negative logit_bias id": (PROMPT, SamplingParams(logit_bias={-1: 5.0}), "logit_bias"),
    "logit_bias key not an id": (PROMPT, SamplingParams(logit_bias={"abc": 1.0}), "logit_bias"),
    "logit_bias value NaN": (PROMPT, SamplingParams(logit_bias={5: float("nan")}), "logit_bias"),
    "logit_bias value text": (PROMPT, SamplingParams(logit_bias={5: "x"}), "logit_bias"),
    "stop token past the vocab": (PROMPT, SamplingParams(stop_token_ids=[VOCAB]), "stop_token_ids"),
    "stop token negative": (PROMPT, SamplingParams(stop_token_ids=[-3]), "stop_token_ids"),
    "stop token not an int": (PROMPT, SamplingParams(stop_token_ids=["7"]), "stop_token_ids"),
    "stop not a string": (PROMPT, SamplingParams(stop=[3]), "stop"),
    "logprobs past the cap": (PROMPT, mutated(logprobs=VOCAB), "logprobs"),
    "logprobs not an int": (PROMPT, mutated(logprobs=2.5), "logprobs"),
    "top_p NaN": (PROMPT, mutated(top_p=float("nan")), "top_p"),
    "temperature infinite": (PROMPT, mutated(temperature=float("inf")), "temperature"),
    "seed not an int": (PROMPT, SamplingParams(seed=1.5), "seed"),
    "max_tokens not an int": (PROMPT, mutated(max_tokens=2.5), "max_tokens"),
    "skip_special_tokens not a bool": (
        PROMPT,
        mutated(skip_special_tokens="no"),
        "skip_special_tokens",
    ),
    "temperature as text": (PROMPT, mutated(temperature="0.5"), "temperature"),
    "presence_penalty as text": (PROMPT, mutated(presence_penalty="1"), "presence_penalty"),
    "top_p a bool": (PROMPT, mutated(top_p=True), "top_p"),
    "token_healing not a bool": (PROMPT, mutated(token_healing="yes"), "token_healing"),
    "structured not a StructuredOutputs": (PROMPT, mutated(structured="json"), "structured"),
    "empty prompt": ([], SamplingParams(max_tokens=2), "prompt"),
    "prompt id past the vocab": ([1, VOCAB], SamplingParams(max_tokens=2), "prompt"),
    "negative prompt id": ([1, -1], SamplingParams(max_tokens=2), "prompt"),
    "prompt id not an int": ([1, 2.0], SamplingParams(max_tokens=2), "prompt"),
    "prompt id a bool": ([1, True], SamplingParams(max_tokens=2), "prompt"),
    "prompt too long": ([5] * MAX_LEN, SamplingParams(max_tokens=1), "prompt"),
    "prompt + max_tokens too long": (PROMPT, SamplingParams(max_tokens=MAX_LEN), "max_tokens"),
    "params not SamplingParams": (PROMPT, {"max_tokens": 2}, None),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def make_engine(model_dir) -> LLMEngine:
    config = EngineConfig.from_kwargs(
        model=str(model_dir), device="cpu", dtype="float32", num_kv_blocks=64, num_threads=1,
        max_num_seqs=4, max_model_len=MAX_LEN,
    )  # fmt: skip
    return LLMEngine(config, progress=False)


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


def generate(engine: LLMEngine, request_id: str) -> list[int]:
    engine.add_request(PROMPT, greedy(), request_id)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                return out.outputs[0].token_ids
    raise AssertionError("no output")


@pytest.fixture(scope="module")
def engine(model_dir) -> LLMEngine:
    return make_engine(model_dir)


@pytest.fixture(scope="module")
def reference(engine) -> list[int]:
    return generate(engine, "ref")


@pytest.mark.parametrize("case", list(INVALID))
def test_llm_engine_refuses_each_invalid_field_and_keeps_serving(engine, reference, case):
    ids, params, param = INVALID[case]
    # In flight beside the bad request: it must finish unharmed.
    engine.add_request(PROMPT, greedy(), f"beside-{case}")
    with pytest.raises(RequestError) as e:
        engine.add_request(ids, params, f"bad-{case}")
    if param is not None:
        assert e.value.param == param
    outputs = {}
    while engine.has_unfinished_requests():
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert outputs[f"beside-{case}"].outputs[0].token_ids == reference
    assert f"bad-{case}" not in outputs
    assert generate(engine, f"after-{case}") == reference


def test_changing_params_after_add_request_cannot_reach_the_engine(engine, reference):
    params = greedy()
    engine.add_request(PROMPT, params, "a")
    params.logit_bias = {VOCAB * 2: 1.0}  # the engine holds its own checked copy
    params.max_tokens = 1
    outputs = [o for _ in range(20) for o in engine.step() if o.finished]
    assert outputs[0].outputs[0].token_ids == reference


def test_async_engine_refuses_each_invalid_field_and_keeps_serving(model_dir, reference):
    async def main():
        engine = AsyncEngine(make_engine(model_dir), max_queued_requests=4)
        engine.start()
        beside = await engine.add_request(PROMPT, greedy(), "beside")
        errors = {}
        for case, (ids, params, _) in INVALID.items():
            with pytest.raises(RequestError) as e:
                await engine.add_request(ids, params, f"bad-{case}")
            errors[case] = e.value
            assert engine.is_running, case
        outs = [out async for out in beside]
        after = [out async for out in engine.generate(PROMPT, greedy(), "after")]
        assert engine.is_running and engine.num_requests_in_flight == 0
        await engine.shutdown()
        return errors, outs[-1], after[-1]

    errors, beside, after = asyncio.run(main())
    assert len(errors) == len(INVALID)
    assert beside.outputs[0].token_ids == reference == after.outputs[0].token_ids


def test_logprobs_beyond_a_small_vocabulary_are_refused():
    ok = validate_request(PROMPT, SamplingParams(logprobs=10), vocab_size=60, max_model_len=MAX_LEN)
    assert ok.params.logprobs == 10 and ok.max_tokens == 16
    with pytest.raises(RequestError) as e:
        validate_request([1, 2, 3], SamplingParams(logprobs=20), vocab_size=15, max_model_len=99)
    assert e.value.param == "logprobs"
