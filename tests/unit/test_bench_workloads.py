"""Workloads: the prompts, lengths and sharing each spec promises."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minerva.bench.workloads import STANDARD_PROMPTS, build_workload, parse_workload
from minerva.errors import ConfigError


def test_standard_workload_has_the_four_prompts_cycled():
    reqs = build_workload("standard", num_prompts=6)
    assert [r.name for r in reqs] == [
        "greeting",
        "quantum",
        "rust-fibonacci",
        "ai-history",
        "greeting",
        "quantum",
    ]
    assert reqs[1].prompt == "Explain quantum computing in simple terms."
    assert [r.max_tokens for r in reqs[:4]] == [20, 100, 150, 256]
    assert reqs[0].chat_messages() == [{"role": "user", "content": "Hello! How are you today?"}]
    assert all(r.max_tokens == 7 for r in build_workload("standard", 4, max_tokens=7))
    assert len(build_workload("standard")) == len(STANDARD_PROMPTS)


def test_fixed_lengths_exact_in_ids_and_words_and_no_shared_prefix():
    reqs = build_workload("fixed:in=40,out=12", num_prompts=20, vocab_size=500)
    assert all(len(r.prompt_token_ids) == 40 and r.max_tokens == 12 for r in reqs)
    assert all(len(r.prompt.split()) == 40 for r in reqs)
    assert all(16 <= t < 500 for r in reqs for t in r.prompt_token_ids)  # no special ids
    # Distinct openings: prefix caching must not help a workload that does not mean it to.
    assert len({tuple(r.prompt_token_ids[:4]) for r in reqs}) == 20
    assert len({" ".join(r.prompt.split()[:6]) for r in reqs}) == 20
    assert build_workload("fixed:in=5,out=2", 3)[0].prompt_token_ids is None  # no vocab given


def test_random_lengths_stay_in_range_with_the_requested_mean_and_are_seeded():
    spec = "random:in=100,out=40,range=0.5"
    reqs = build_workload(spec, num_prompts=2000, seed=3, vocab_size=1000)
    ins = np.array([len(r.prompt_token_ids) for r in reqs])
    outs = np.array([r.max_tokens for r in reqs])
    assert ins.min() >= 50 and ins.max() <= 150 and abs(ins.mean() - 100) < 2
    assert outs.min() >= 20 and outs.max() <= 60 and abs(outs.mean() - 40) < 1
    assert len(set(ins.tolist())) > 50  # really spread, not constant
    again = build_workload(spec, num_prompts=2000, seed=3, vocab_size=1000)
    assert [r.prompt for r in again] == [r.prompt for r in reqs]
    other = build_workload(spec, num_prompts=2000, seed=4, vocab_size=1000)
    assert [r.prompt for r in other] != [r.prompt for r in reqs]


def test_shared_prefix_requests_share_exactly_the_system_prompt():
    reqs = build_workload("shared-prefix:prefix=64,in=8,out=5", num_prompts=5, vocab_size=300)
    system = reqs[0].messages[0]
    assert system["role"] == "system" and len(system["content"].split()) == 64
    assert all(r.messages[0] == system for r in reqs)
    assert len({r.messages[1]["content"] for r in reqs}) == 5
    assert all(r.prompt.startswith(system["content"]) for r in reqs)
    prefix = reqs[0].prompt_token_ids[:64]
    assert all(r.prompt_token_ids[:64] == prefix and len(r.prompt_token_ids) == 72 for r in reqs)
    assert len({tuple(r.prompt_token_ids[64:]) for r in reqs}) == 5


def test_jsonl_workload(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "first prompt", "max_tokens": 9},
        {"messages": [{"role": "user", "content": "a chat"}]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    reqs = build_workload(f"jsonl:{path}", num_prompts=3)
    assert [r.prompt for r in reqs] == ["first prompt", "a chat", "first prompt"]
    assert [r.max_tokens for r in reqs] == [9, 128, 9]
    assert reqs[1].chat_messages() == lines[1]["messages"]
    assert len(build_workload(str(path))) == 2  # a bare .jsonl path works too
    path.write_text('{"text": "no prompt"}\n')
    with pytest.raises(ConfigError, match="needs a 'prompt' or 'messages'"):
        build_workload(f"jsonl:{path}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus", "unknown workload 'bogus'"),
        ("fixed:in", "must look like key=value"),
        ("fixed:in=abc", "in='abc' is not a number"),
        ("fixed:in=0", "in must be at least 1"),
        ("random:range=2", "range must be in"),
        ("jsonl:/no/such/file.jsonl", "does not exist"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_workload(spec, 2)


def test_parse_workload_round_trips():
    spec = parse_workload("fixed:in=512,out=128")
    assert (spec.kind, spec.options) == ("fixed", {"in": "512", "out": "128"})
    assert str(spec) == "fixed:in=512,out=128"
