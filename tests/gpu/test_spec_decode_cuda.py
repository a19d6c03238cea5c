"""Speculative decoding on a CUDA GPU (skipped without one; run on the device): verify steps
replayed from CUDA graphs (every row padded to K + 1 tokens) against eager verify steps and
plain decoding, n-gram and draft model."""

from __future__ import annotations

import shutil

import pytest
import torch

from minerva import LLM, SamplingParams
from tests.tiny_models import build_tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPTS = [
    [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6],
    [20, 21, 22, 20, 21, 22, 20],
    [100, 3, 77, 41, 9, 200, 13],  # no repetition: rows without drafts beside verify rows
    list(range(30, 70)),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda_spec")
    build_tiny_model(path, "mistral", seed=4, sliding_window=24)
    draft = tmp_path_factory.mktemp("cuda_spec_draft")
    build_tiny_model(draft, "llama", seed=5, num_hidden_layers=1)
    return path, draft


def make(path, **kw) -> LLM:
    kw.setdefault("speculative_adaptive", False)  # speculate on every step
    return LLM(model=str(path), device="cuda", dtype="float32", block_size=16, progress=False, **kw)


def greedy(n=48):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("k", [1, 4, 8])
def test_verify_graphs_give_plain_tokens(tiny, k):
    path, _ = tiny
    plain = [o.token_ids for o in make(path).generate(PROMPTS, greedy())]
    llm = make(path, speculative_method="ngram", num_speculative_tokens=k)
    assert llm.engine.worker.runner.verify_graphs is not None
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy())] == plain
    assert llm.engine.worker.runner.verify_graphs.num_replays > 0
    for p in PROMPTS:  # batch 1 too
        assert llm.generate(p, greedy())[0].token_ids == plain[PROMPTS.index(p)]


def test_verify_graph_logits_equal_eager(tiny):
    path, _ = tiny
    spec = dict(speculative_method="ngram", num_speculative_tokens=4)
    graphed, eager = make(path, **spec), make(path, **spec)
    eager.engine.worker.runner.verify_graphs = None
    logits = []
    for llm in (graphed, eager):
        llm.engine.worker.runner.captured_logits = []
        llm.generate(PROMPTS, greedy(32))
        logits.append(llm.engine.worker.runner.captured_logits)
    assert graphed.engine.worker.runner.verify_graphs.num_replays > 0
    assert len(logits[0]) == len(logits[1])
    for a, b in zip(*logits):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)


def test_seeded_sampling_with_verify_graphs(tiny):
    path, _ = tiny
    params = [
        SamplingParams(max_tokens=40, temperature=0.3, seed=s, ignore_eos=True) for s in range(4)
    ]
    plain = [o.token_ids for o in make(path).generate(PROMPTS, params)]
    spec = make(path, speculative_method="ngram", num_speculative_tokens=4)
    assert [o.token_ids for o in spec.generate(PROMPTS, params)] == plain


def test_draft_model_on_cuda(tiny, tmp_path):
    path, draft = tiny
    plain = [o.token_ids for o in make(path).generate(PROMPTS, greedy())]
    llm = make(path, speculative_method="draft", draft_model=str(draft), num_speculative_tokens=4)
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy())] == plain
    same = tmp_path / "same"
    shutil.copytree(path, same)
    llm = make(path, speculative_method="draft", draft_model=str(same), num_speculative_tokens=4)
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy())] == plain
    assert llm.engine.stats().spec_decode.acceptance_rate == 1.0
    assert llm.engine.worker.draft_catch_up.num_replays > 0  # the passes after verify steps


def test_draft_catch_up_graphs_propose_what_the_eager_pass_does(tiny):
    path, draft = tiny
    spec = dict(speculative_method="draft", draft_model=str(draft), num_speculative_tokens=4)
    proposals = []
    for graphed in (True, False):
        llm = make(path, **spec)
        proposer = llm.engine.worker.draft_proposer
        if not graphed:
            proposer.catch_up_graph = None
        proposals.append([])

        def logged(reqs, ks, seen=proposals[-1], propose=proposer.propose):
            seen.append(propose(reqs, ks))
            return seen[-1]

        proposer.propose = logged
        llm.generate(PROMPTS, greedy(32))
    assert proposals[0] == proposals[1]
