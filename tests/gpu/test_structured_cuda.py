"""Grammar rows on a CUDA GPU (skipped without one; run on the device): with async scheduling, the
early masks on their thread and CUDA graphs, constrained requests give the tokens of the same
engine run synchronously, and the next step's forward is queued before the previous one is read."""

from __future__ import annotations

import json

import pytest
import torch

from minerva import LLM
from tests.model.test_structured_engine import _mixed_batch, _outputs

pytest.importorskip("llguidance")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cuda_llm(**kw) -> LLM:
    from minerva.demo import demo_model_path

    return LLM(
        model=str(demo_model_path()), device="cuda", dtype="float32", max_model_len=512,
        progress=False, **kw,
    )  # fmt: skip


def test_async_grammar_rows_on_cuda_give_the_tokens_of_sync_ones():
    prompts, params = _mixed_batch()
    want = _outputs(_cuda_llm(async_scheduling="off"), prompts, params)
    llm = _cuda_llm()  # async: the CUDA default
    assert llm.engine.async_scheduling and llm.engine.worker.runner.graphs is not None
    engine = llm.engine
    events = []
    launch, finish = engine.worker.launch, engine._finish

    def logged_launch(out):
        events.append(("launch", out.step_id))
        return launch(out)

    def logged_finish(launched):
        events.append(("read", launched.out.step_id))
        finish(launched)

    engine.worker.launch, engine._finish = logged_launch, logged_finish
    got = _outputs(llm, prompts, params)
    assert got == want
    for i in (0, 6, 8):
        assert set(json.loads(got[i][1])) == {"id", "kind", "tags"}
    read_at = {step: i for i, (kind, step) in enumerate(events) if kind == "read"}
    launches = [(i, step) for i, (kind, step) in enumerate(events) if kind == "launch"]
    overlapped = sum(read_at[step] > nxt for (_, step), (nxt, _) in zip(launches, launches[1:]))
    assert overlapped > len(launches) // 2
