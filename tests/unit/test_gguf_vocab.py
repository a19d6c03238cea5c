"""GGUF vocabularies against llama.cpp's published test vectors (models/ggml-vocab-*.gguf with
.inp texts and .out token ids, checked as llama.cpp's test-tokenizer-0 does: no BOS/EOS, special
tokens not parsed), fetched by scripts/fetch_vocab_vectors.py.

Covered: every SPM ("llama") and BPE ("gpt2", "gemma4") vocabulary that has vectors. Out of
scope: bert-bge (WordPiece) and nomic-bert-moe (Unigram "t5"); aquila, baichuan and gpt-neox
have no vectors and are checked for round-trips only.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
from pathlib import Path

import pytest

from minerva.errors import ModelLoadError
from minerva.tokenizer import IncrementalDetokenizer, gguf_vocab
from minerva.tokenizer.gguf_vocab import tokenizer_from_gguf_metadata

from .gguf_metadata_reader import read_gguf_metadata

_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("fetch", _ROOT / "scripts/fetch_vocab_vectors.py")
_fetch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fetch)
VOCAB_DIR = _fetch.vocab_dir()

SPM = ["llama-spm", "phi-3"]
BPE = [
    "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
    "mpt", "qwen2", "qwen35", "refact", "starcoder",
]  # fmt: skip
SEPARATOR = "\n__ggml_vocab_test__\n"

if not (VOCAB_DIR / _fetch.DONE_MARKER).is_file():
    message = f"no llama.cpp vocabulary vectors in {VOCAB_DIR}: run scripts/fetch_vocab_vectors.py"
    if os.environ.get("CI"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


@functools.cache
def _fields(name: str) -> dict:
    return read_gguf_metadata(VOCAB_DIR / f"ggml-vocab-{name}.gguf")


@functools.cache
def _tokenizer(name: str, parse_special: bool = False):
    return tokenizer_from_gguf_metadata(_fields(name), parse_special=parse_special, name=name)


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    base = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    texts = base.with_suffix(".gguf.inp").read_bytes().decode("utf-8").split(SEPARATOR)
    lines = base.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", SPM + BPE)
def test_llama_cpp_vectors(name):
    tok = _tokenizer(name)
    vectors = _vectors(name)
    assert len(vectors) >= 40
    for text, ids in vectors:
        got = tok.encode(text, add_special_tokens=False)
        assert got == ids, f"{name}: {text!r}"
        assert tok.decode(got) == text, f"{name}: {text!r}"


@pytest.mark.parametrize("name", SPM)
def test_spm_python_twin_matches_vectors(name, monkeypatch):
    """The Python SPM path (used for tied scores) reproduces llama.cpp on the same vectors."""
    real = gguf_vocab.spm_merges
    monkeypatch.setattr(gguf_vocab, "spm_merges", lambda t, s: (real(t, s)[0], False))
    tok = tokenizer_from_gguf_metadata(_fields(name), parse_special=False)
    assert tok.backend.pre_tokenizer is not None  # the Python splitter is in use
    for text, ids in _vectors(name):
        assert tok.encode(text, add_special_tokens=False) == ids, repr(text)


def test_spm_merges_match_python_twin_on_random_text(monkeypatch):
    """Score-ranked BPE merges == llama.cpp's merge loop, on text made of vocabulary pieces
    and whitespace runs (Llama's tied "▁▁..." scores)."""
    fast = _tokenizer("llama-spm")
    real = gguf_vocab.spm_merges
    monkeypatch.setattr(gguf_vocab, "spm_merges", lambda t, s: (real(t, s)[0], False))
    slow = tokenizer_from_gguf_metadata(_fields("llama-spm"), parse_special=False)
    fields = _fields("llama-spm")
    pieces = [
        t.replace("▁", " ")
        for t, k in zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"])
        if k == 1
    ]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        text = " " * rng.randint(0, 20) + text + "\n" * rng.randint(0, 2) + "🦙"
        ids = fast.encode(text, add_special_tokens=False)
        assert ids == slow.encode(text, add_special_tokens=False), repr(text)
        assert fast.decode(ids) == text


@pytest.mark.parametrize(("name", "model"), [("aquila", "gpt2"), ("baichuan", "llama"),
                                             ("gpt-neox", "gpt2")])  # fmt: skip
def test_vocabularies_without_vectors_round_trip(name, model):
    assert _fields(name)["tokenizer.ggml.model"] == model
    tok = _tokenizer(name)
    for text, _ in _vectors("llama-spm"):
        if model == "llama" and (text.startswith(" ") or "\n " in text):
            continue  # SPM (as llama.cpp) merges a leading space into the prefix "▁"
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text, repr(text)


@pytest.mark.parametrize(("name", "model"), [("bert-bge", "bert"), ("nomic-bert-moe", "t5")])
def test_out_of_scope_vocabularies_are_clear_errors(name, model):
    with pytest.raises(ModelLoadError, match=f"'{model}'.*tokenizer.json"):
        tokenizer_from_gguf_metadata(_fields(name))


def test_special_tokens_and_bos():
    tok = _tokenizer("llama-bpe", parse_special=True)
    bos = tok.bos_token_id
    assert bos == 128000 and tok.add_bos_token  # llama-bpe adds BOS (llama.cpp's default)
    hello = tok.encode("Hello", add_special_tokens=False)
    assert tok.encode("Hello") == [bos, *hello]
    assert tok.encode("<|begin_of_text|>Hello", add_special_tokens=False) == [bos, *hello]
    plain = _tokenizer("llama-bpe").encode("<|begin_of_text|>", add_special_tokens=False)
    assert bos not in plain and len(plain) > 1  # parse_special=False: just text
    qwen = _tokenizer("qwen2", parse_special=True)
    assert not qwen.add_bos_token  # the file says nothing: llama.cpp adds none for qwen2
    im_end = qwen.token_to_id("<|im_end|>")
    assert qwen.encode("hi<|im_end|>", add_special_tokens=False)[-1] == im_end
    assert qwen.decode([im_end]) == ""  # control tokens are skipped
    assert isinstance(qwen.chat_template, str) and "im_start" in qwen.chat_template


@pytest.mark.parametrize("name", ["llama-spm", "qwen2", "gemma-4"])
def test_streaming_detokenizer_reproduces_text(name):
    tok = _tokenizer(name)
    for text, _ in _vectors(name)[:25]:
        ids = tok.encode(text, add_special_tokens=False)
        detok = IncrementalDetokenizer(tok)
        out = "".join(detok.update([i])[0] for i in ids) + detok.flush()
        expected = text[1:] if name == "llama-spm" and text.startswith(" ") else text
        assert out in (text, expected), repr(text)
