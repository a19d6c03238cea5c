"""Structured outputs below the server: token bytes of a vocabulary, the grammar compiler's
cache and errors, matchers, the batch bitmask (parallel vs one by one), the sampler's bitmask
op against a slow twin, and every tool-call grammar's sentences parsing back into calls."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from minerva.demo import demo_model_path
from minerva.sampler import apply_token_bitmask
from minerva.sampling_params import SamplingParams, StructuredOutputs
from minerva.server.tool_calls import tool_plan
from minerva.server.tool_parsers import PARSERS
from minerva.structured import (
    GrammarCompiler,
    GrammarMatcher,
    StructuredOutputError,
    fill_bitmask,
    vocabulary_of,
)
from minerva.structured.bitmask import bitmask_words
from minerva.tokenizer import Tokenizer
from tests.tokenizer_fixtures import build_llama2


@pytest.fixture(scope="module")
def demo_tokenizer() -> Tokenizer:
    return Tokenizer.from_folder(demo_model_path())


@pytest.fixture(scope="module")
def compiler(demo_tokenizer) -> GrammarCompiler:
    vocab = vocabulary_of(demo_tokenizer, 4096, [demo_tokenizer.eos_token_id])
    return GrammarCompiler(demo_tokenizer, vocab)


def _allowed(bitmask: np.ndarray, row: int, vocab_size: int) -> np.ndarray:
    bits = np.unpackbits(bitmask[row].view(np.uint8), bitorder="little")[:vocab_size]
    return np.nonzero(bits)[0]


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_token_bytes_spell_what_decode_spells(kind, demo_tokenizer, tmp_path):
    tok = demo_tokenizer if kind == "byte_level" else Tokenizer.from_folder(build_llama2(tmp_path))
    vocab = vocabulary_of(tok, tok.vocab_size + 3, [tok.eos_token_id])
    for text in ["Hello world", "naïve café, 3.14!", "  two  spaces\nnew line"]:
        ids = tok.encode(text, add_special_tokens=False)
        spelled = b"".join(vocab.token_bytes[i] for i in ids).decode("utf-8")
        assert spelled.lstrip(" ") == tok.decode(ids).lstrip(" ")  # SentencePiece: "▁" prefix
    assert vocab.size == tok.vocab_size + 3 and vocab.token_bytes[-1] == b""
    assert tok.eos_token_id in vocab.special_ids and vocab.token_bytes[tok.eos_token_id] == b""


def test_compile_is_cached_and_errors_name_the_problem(compiler):
    spec = StructuredOutputs(
        json_schema={"type": "object", "properties": {"a": {"type": "integer"}}}
    )
    same = StructuredOutputs(
        json_schema={"properties": {"a": {"type": "integer"}}, "type": "object"}
    )
    assert compiler.compile(spec) is compiler.compile(same)
    cases = [
        (StructuredOutputs(json_schema={"type": "strin"}), "invalid JSON schema: .*strin"),
        (StructuredOutputs(json_schema="{not json"), "invalid JSON schema"),
        (StructuredOutputs(json_schema={"type": "object", "if": {}}), "Unimplemented keys.*if"),
        (StructuredOutputs(regex="(("), "invalid regular expression"),
        (StructuredOutputs(grammar="start: undefined_rule"), "unknown name"),
        (StructuredOutputs(grammar='root ::= "a" | missing'), "missing"),
        (StructuredOutputs(choice=["a", ""]), "non-empty"),
    ]
    for bad, message in cases:
        with pytest.raises(StructuredOutputError, match=message):
            compiler.compile(bad)


def test_structured_outputs_take_exactly_one_constraint():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputs(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputs()
    params = SamplingParams(temperature=0, structured=StructuredOutputs(regex="a+"))
    assert not params.plain_greedy  # the sampler must see the bitmask


def _walk(compiler, spec, seed: int, max_steps: int = 400) -> str:
    """Random tokens among those the matcher allows until it allows only EOS."""
    vocab = compiler.vocabulary
    matcher = GrammarMatcher(compiler.compile(spec).new_matcher(), vocab.eos_token_ids)
    rng, out = random.Random(seed), b""
    for _ in range(max_steps):
        bitmask = fill_bitmask([matcher], vocab.size)
        allowed = [int(t) for t in _allowed(bitmask, 0, vocab.size)]
        eos_allowed = any(t in vocab.eos_token_ids for t in allowed)
        choices = [t for t in allowed if t not in vocab.eos_token_ids]
        if eos_allowed and (not choices or rng.random() < 0.5):
            return out.decode("utf-8")
        token = rng.choice(choices)
        matcher.accept(token)
        assert not matcher.failed
        out += vocab.token_bytes[token]
    raise AssertionError(f"no end after {max_steps} tokens: {out!r}")


def test_every_sentence_of_a_schema_validates(compiler):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": -5, "maximum": 5},
            "e": {"enum": ["x", "y"]},
            "a": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        },
        "required": ["n", "e", "a"],
        "additionalProperties": False,
    }
    spec = StructuredOutputs(json_schema=schema)
    for seed in range(5):
        jsonschema.validate(json.loads(_walk(compiler, spec, seed)), schema)


@pytest.mark.parametrize("family", sorted(PARSERS))
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "b"}}])
def test_forced_tool_calls_always_parse(compiler, family, choice):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "a",
                "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "b",
                "parameters": {
                    "type": "object",
                    "properties": {"k": {"enum": [1, 2]}},
                    "required": ["k"],
                    "additionalProperties": False,
                },
            },
        },
    ]
    plan = tool_plan(tools, choice, None, None)
    plan.parser = PARSERS[family]()
    chosen = tools if choice == "required" else tools[1:]
    plan.structured = StructuredOutputs(grammar=plan.parser.grammar(chosen, plan.parallel))
    for seed in range(3):
        text = _walk(compiler, plan.structured, seed)
        calls = plan.parse(text).tool_calls
        assert calls, text
        if choice != "required":
            assert [c.name for c in calls] == ["b"]
            assert json.loads(calls[0].arguments)["k"] in (1, 2)


def test_a_refused_token_leaves_only_eos(compiler):
    vocab = compiler.vocabulary
    matcher = GrammarMatcher(
        compiler.compile(StructuredOutputs(choice=["yes"])).new_matcher(), vocab.eos_token_ids
    )
    no = compiler.tokenizer.encode("no", add_special_tokens=False)[0]
    matcher.accept(no)  # the mask prevents this; if it happens the request just ends
    assert matcher.failed
    bitmask = fill_bitmask([matcher], vocab.size)
    assert _allowed(bitmask, 0, vocab.size).tolist() == list(vocab.eos_token_ids)


def test_parallel_bitmask_equals_one_by_one(compiler):
    vocab = compiler.vocabulary
    specs = [StructuredOutputs(json_object=True), StructuredOutputs(regex=r"[a-z]{2,5}\d")]
    matchers = [
        GrammarMatcher(compiler.compile(specs[i % 2]).new_matcher(), vocab.eos_token_ids)
        for i in range(6)
    ]
    rows = [*matchers[:3], None, *matchers[3:]]
    parallel = fill_bitmask(rows, vocab.size)  # >= 4 grammar rows: llguidance's thread pool
    assert parallel.shape == (7, bitmask_words(vocab.size))
    for row, m in enumerate(rows):
        single = np.full((1, parallel.shape[1]), -1, np.int32)
        if m is not None:
            m.fill_bitmask(single, 0)
        np.testing.assert_array_equal(parallel[row], single[0])
    assert fill_bitmask([None, None], vocab.size) is None


def test_apply_token_bitmask_matches_a_slow_twin():
    g = torch.Generator().manual_seed(0)
    n, vocab = 5, 100
    logits = torch.randn(n, vocab, generator=g)
    words = torch.randint(-(2**31), 2**31 - 1, (n, bitmask_words(vocab)), generator=g).int()
    words[4] = 0  # a row that allows nothing is left alone, not turned into NaNs
    masked = apply_token_bitmask(logits, words)
    expected = logits.clone()
    for r in range(n - 1):
        for t in range(vocab):
            if not (int(words[r, t // 32]) >> (t % 32)) & 1:
                expected[r, t] = float("-inf")
    torch.testing.assert_close(masked, expected)
    assert apply_token_bitmask(logits, None) is logits


def test_draft_masks_equal_masks_after_accepting_each_draft(compiler):
    vocab = compiler.vocabulary
    spec = StructuredOutputs(json_schema={"type": "object", "properties": {"k": {"enum": ["ab"]}}})
    grammar = compiler.compile(spec)
    good = compiler.tokenizer.encode('{"k": "ab"}', add_special_tokens=False)
    bad = good[:2] + compiler.tokenizer.encode("zz", add_special_tokens=False)[:1] + good[3:]
    for drafts in (good[:4], bad[:4]):
        matcher = GrammarMatcher(grammar.new_matcher(), vocab.eos_token_ids)
        matcher.accept(good[0])
        words = bitmask_words(vocab.size)
        at_once = np.zeros((len(drafts), words), np.int32)
        matcher.fill_bitmask_with_drafts(at_once, 0, drafts[1:])
        assert not matcher.failed
        for j in range(len(drafts)):  # the slow twin: accept the drafts one by one
            one = np.zeros((1, words), np.int32)
            matcher.fill_bitmask(one, 0)
            np.testing.assert_array_equal(at_once[j], one[0])
            if j + 1 < len(drafts):
                matcher.accept(drafts[j + 1])
        if drafts is bad:
            assert matcher.failed  # the refused draft: its row and later allow only EOS
            assert _allowed(at_once, 3, vocab.size).tolist() == list(vocab.eos_token_ids)
        else:
            assert not matcher.failed


def test_detokenizer_drops_the_healed_prefix_once(demo_tokenizer):
    from minerva.tokenizer import IncrementalDetokenizer

    ids = demo_tokenizer.encode("hello world wide", add_special_tokens=False)
    full = demo_tokenizer.decode(ids)
    detok = IncrementalDetokenizer(demo_tokenizer, [], skip_prefix=full[:7])
    streamed = "".join(detok.update([t])[0] for t in ids) + detok.flush()
    assert streamed == full[7:]
