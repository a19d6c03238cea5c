"""Draft-model speculation on CPU: a tiny random draft/target pair gives exactly the target's
tokens; draft = target accepts every draft; a draft with another tokenizer is refused."""

from __future__ import annotations

import shutil

import pytest

from minerva import LLM, SamplingParams
from minerva.errors import ConfigError
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_model
from tests.tokenizer_fixtures import build_byte_level

PROMPTS = [
    "the cat sat on the mat. the cat",
    "one two three four one two",
    "Hello, world! How are you today?",
    "a",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    target = tmp_path_factory.mktemp("target")
    build_byte_level(target, vocab_size=500)
    tok = Tokenizer.from_folder(target)
    ids = dict(vocab_size=tok.vocab_size, eos_token_id=tok.eos_token_id)
    build_tiny_model(target, "llama", seed=11, **ids)
    draft = tmp_path_factory.mktemp("draft")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(target / name, draft / name)
    build_tiny_model(draft, "llama", seed=12, num_hidden_layers=1, hidden_size=32, **ids)
    return target, draft


def make_llm(target, draft=None, k=0, **kw) -> LLM:
    spec = dict(speculative_method="draft", draft_model=str(draft), num_speculative_tokens=k)
    spec["speculative_adaptive"] = False  # speculate on every step
    common = dict(device="cpu", dtype="float32", block_size=4, progress=False)
    return LLM(model=str(target), **common, **(spec if k else {}), **kw)


def greedy(max_tokens=32, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def plain(pair):
    return make_llm(pair[0])


@pytest.mark.parametrize("k", [1, 4, 8])
def test_random_draft_gives_the_targets_tokens(pair, plain, k):
    target, draft = pair
    llm = make_llm(target, draft, k)
    expected = [o.token_ids for o in plain.generate(PROMPTS, greedy())]
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy())] == expected
    stats = llm.engine.stats().spec_decode.as_dict()
    assert stats["num_draft_tokens"] > 0 and stats["num_verify_steps"] > 0


def test_draft_equal_to_target_accepts_everything(pair, plain):
    target, _ = pair
    llm = make_llm(target, target, 4)
    params = [greedy(), SamplingParams(max_tokens=32, temperature=0.8, seed=3, ignore_eos=True)]
    expected = [plain.generate(PROMPTS[0], sp)[0].token_ids for sp in params]
    assert [llm.generate(PROMPTS[0], sp)[0].token_ids for sp in params[:1]] == expected[:1]
    stats = llm.engine.stats().spec_decode.as_dict()
    assert stats["acceptance_rate"] == 1.0
    assert stats["mean_accepted_length"] > 4  # 5 per step but where max_tokens cut the drafts
    assert llm.generate(PROMPTS[0], params[1])[0].token_ids == expected[1]


def test_draft_across_preemption_and_abort(pair, plain):
    target, draft = pair
    llm = make_llm(target, draft, 4, num_kv_blocks=30, max_model_len=96)
    expected = [o.token_ids for o in plain.generate(PROMPTS, greedy(48))]
    assert [o.token_ids for o in llm.generate(PROMPTS, greedy(48))] == expected
    assert llm.engine.stats().num_preemptions > 0
    engine, kv = llm.engine, llm.engine.kv_cache_manager
    ids = [engine.add_request(p, greedy(40)) for p in PROMPTS]
    for _ in range(4):
        engine.step()
    assert engine.last_scheduler_output.scheduled_spec_token_ids
    engine.abort_request(ids[:2])
    while engine.has_unfinished_requests():
        engine.step()
    assert kv.usage == 0.0
    assert not engine.worker.draft_proposer._states  # nothing kept for ended requests


def test_a_draft_with_another_tokenizer_is_refused(pair, tmp_path):
    target, _ = pair
    other = tmp_path / "other"
    build_byte_level(other, vocab_size=400)
    tok = Tokenizer.from_folder(other)
    build_tiny_model(other, "llama", seed=1, vocab_size=tok.vocab_size)
    with pytest.raises(ConfigError, match="different tokenizers"):
        make_llm(target, other, 4)
    with pytest.raises(ConfigError, match="draft_model"):
        make_llm(target, tmp_path / "missing", 4)
    with pytest.raises(ConfigError, match="needs a draft_model"):
        LLM(model=str(target), device="cpu", num_speculative_tokens=2, progress=False)


def test_catch_up_passes_run_in_the_cpu_step_as_the_layered_path_would(pair):
    """The draft's pass after a verify step (one or two tokens a request) runs like a verify
    step: on the CPU through the whole-step kernel, a decode row per token, proposing what the
    layered path proposes."""
    from minerva.ops import cpu_linear
    from minerva.ops.cpu_decode_step import DecodeStep

    if not cpu_linear.load():
        pytest.skip("no CPU kernels here")
    target, _ = pair
    proposals = []
    for on in (True, False):
        llm = make_llm(target, target, 4)  # draft = target: every draft accepted, two-token rows
        proposer = llm.engine.worker.draft_proposer
        proposer.model.use_cpu_step = on
        proposals.append([])
        rows = []

        def logged(reqs, ks, seen=proposals[-1], propose=proposer.propose):
            seen.append(propose(reqs, ks))
            return seen[-1]

        def counted(step, x, *args, ids=None, run=DecodeStep.run, rows=rows, draft=proposer):
            out = run(step, x, *args, ids=ids)
            if out is not None and step is draft.model._cpu_step:
                rows.append((ids if x is None else x).shape[0])
            return out

        proposer.propose = logged
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DecodeStep, "run", counted)
            llm.generate(PROMPTS[:2], greedy(24))
        if on:  # a pass of more rows than requests: two-token catch-up rows, one row a token
            assert max(rows) > 2
    assert proposals[0] == proposals[1]
