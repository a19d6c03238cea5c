"""Random prompt ids for the offline benchmarks come back unchanged from their text when the
model's tokenizer is given, so engines that take text prompts (mistral.rs) run the same tokens."""

from __future__ import annotations

import pytest

from minerva.bench.workloads import build_workload
from minerva.demo import demo_model_path
from minerva.tokenizer import Tokenizer


def _round_trip(tok: Tokenizer, ids: list[int]) -> list[int]:
    return tok.encode(tok.backend.decode(ids, skip_special_tokens=False), add_special_tokens=False)


@pytest.mark.parametrize("spec", ["random:in=24,out=4,range=0.5", "fixed:in=128,out=4"])
def test_random_ids_are_text_stable_with_a_tokenizer(spec):
    tok = Tokenizer.from_folder(demo_model_path())
    vocab = tok.vocab_size
    plain = build_workload(spec, 12, seed=3, vocab_size=vocab)
    stable = build_workload(spec, 12, seed=3, vocab_size=vocab, tokenizer=tok)
    assert [len(r.prompt_token_ids) for r in stable] == [len(r.prompt_token_ids) for r in plain]
    assert all(_round_trip(tok, r.prompt_token_ids) == r.prompt_token_ids for r in stable)
    # Without the tokenizer most random sequences do not survive: the test is not vacuous.
    assert sum(_round_trip(tok, r.prompt_token_ids) != r.prompt_token_ids for r in plain) > 6
    again = build_workload(spec, 12, seed=3, vocab_size=vocab, tokenizer=tok)
    assert [r.prompt_token_ids for r in again] == [r.prompt_token_ids for r in stable]
