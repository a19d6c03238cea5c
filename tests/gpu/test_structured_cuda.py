"""Structured outputs on a CUDA GPU (demo model; skipped without one, run on the device): CUDA
graphs, the masks filled on their thread, and async scheduling, where a step with grammar rows is
launched before the previous one is read and sampled after it."""

from __future__ import annotations

import json

import pytest
import torch

from minerva import LLM, SamplingParams
from minerva.demo import demo_model_path
from minerva.sampling_params import StructuredOutputs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

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


def _llm(mode: str) -> LLM:
    return LLM(
        model=str(demo_model_path()),
        device="cuda",
        dtype="float32",
        max_num_seqs=32,
        async_scheduling=mode,
        progress=False,
    )


def _batch() -> tuple[list[str], list[SamplingParams]]:
    """Grammar rows (seeded, greedy; ending by the grammar, max_tokens or a stop string) among
    free rows: more than 4 grammar rows, so llguidance fills them in parallel."""
    prompts, params = [], []
    for i in range(12):
        prompts.append(PROMPT)
        kw = {"max_tokens": 7 if i % 4 == 1 else 80}
        if i % 4 == 2:
            kw["stop"] = ['"kind"']
        temperature = 0.0 if i % 4 == 3 else 1.0
        params.append(SamplingParams(temperature=temperature, seed=i, structured=JSON, **kw))
        prompts.append(f"Once upon a time {i}")
        params.append(SamplingParams(temperature=1.0, seed=100 + i, max_tokens=8 + i))
    return prompts, params


def test_async_grammar_rows_on_cuda_give_the_tokens_of_sync_ones():
    prompts, params = _batch()
    runs = {}
    for mode in ("off", "on"):
        llm = _llm(mode)
        runner = llm.engine.worker.runner
        assert runner.masks.early and runner.graphs is not None
        deferred = []
        sample = llm.engine.worker.sample

        def counted(step, sample=sample, deferred=deferred):
            deferred.append(not step.sampled)
            return sample(step)

        llm.engine.worker.sample = counted
        outs = llm.generate(prompts, params)
        runs[mode] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]
        assert any(deferred) == (mode == "on")  # async: sampled after the step before is read
        if mode == "on":
            texts = [o.outputs[0].text for o in outs]
        del llm
    assert runs["on"] == runs["off"]
    for i in range(0, 24, 8):  # the grammar ended these (temperature 1, no other limit)
        assert runs["on"][i][1] == "stop" and set(json.loads(texts[i])) == {"id", "kind", "tags"}
    assert all(runs["on"][i][1] == "length" for i in range(2, 24, 8))
