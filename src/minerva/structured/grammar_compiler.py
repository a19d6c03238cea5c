"""Compiles a request's StructuredOutputs into a grammar once, with a cache; a bad schema or
grammar is a RequestError (HTTP 400) naming the problem, raised before the engine takes it.

The grammar engine is llguidance (benchmarks/results/grammar_libraries.json holds why: a
dependency-free abi3 wheel, about a millisecond to compile a schema, every JSON Schema keyword
it cannot honour reported as an error). A compiled grammar is a ready LLMatcher; each request
gets a deep copy of it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from minerva.errors import RequestError
from minerva.sampling_params import StructuredOutputs
from minerva.structured.vocab import Vocabulary, encode_fragment
from minerva.tokenizer import Tokenizer

_ANY_JSON_OBJECT = {"type": "object"}
# JSON as json.dumps writes it (", " and ": ", no other whitespace): free whitespace lets a
# small model pad forever; a schema's own "x-guidance" options win over these.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


_GBNF_RULE = re.compile(r"^\s*[A-Za-z0-9_-]+\s*::=", re.MULTILINE)  # "root ::= ..." lines


class StructuredOutputError(RequestError):
    """A schema, regex or grammar the grammar engine refuses (names the problem)."""

    def __init__(self, message: str, param: str = "response_format") -> None:
        super().__init__(message, code="invalid_structured_output", param=param)


class CompiledGrammar:
    """A grammar ready for matching: new_matcher() hands out independent copies."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher  # llguidance.LLMatcher in its start state
        self.vocab_size = vocab_size

    def new_matcher(self) -> Any:
        return self._matcher.deep_copy()


class GrammarCompiler:
    """StructuredOutputs -> CompiledGrammar for one model's vocabulary (thread-safe, LRU)."""

    def __init__(self, tokenizer: Tokenizer, vocabulary: Vocabulary, cache_size: int = 256):
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._ll_tokenizer: Any = None

    def compile(self, spec: StructuredOutputs) -> CompiledGrammar:
        """The compiled grammar of ``spec`` (cached); StructuredOutputError if it is invalid."""
        key = _cache_key(spec)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compile(spec)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredOutputs) -> CompiledGrammar:
        llguidance = _import_llguidance()
        grammar = _grammar_text(llguidance, spec)
        try:
            matcher = llguidance.LLMatcher(self._llg_tokenizer(), grammar, log_level=0)
        except Exception as e:  # documented never to raise; a bad grammar is still a 400
            raise StructuredOutputError(_describe(spec, str(e)), _param(spec)) from None
        if matcher.is_error():
            raise StructuredOutputError(_describe(spec, matcher.get_error()), _param(spec))
        return CompiledGrammar(matcher, self.vocabulary.size)

    def _llg_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary, built once (tens of ms for 32k tokens)."""
        with self._lock:
            if self._ll_tokenizer is None:
                llguidance = _import_llguidance()
                wrapper = llguidance.TokenizerWrapper(_TokenizerView(self))
                self._ll_tokenizer = llguidance.LLTokenizer(
                    wrapper, n_vocab=self.vocabulary.size, eos_token=_eos(self.vocabulary)
                )
            return self._ll_tokenizer


class _TokenizerView:
    """The attributes and the encode call llguidance.TokenizerWrapper reads."""

    def __init__(self, compiler: GrammarCompiler) -> None:
        vocab = compiler.vocabulary
        self.eos_token_id = _eos(vocab)[0]
        self.bos_token_id = compiler.tokenizer.bos_token_id
        self.tokens = vocab.token_bytes
        self.special_token_ids = sorted(vocab.special_ids)
        self._tokenizer = compiler.tokenizer

    def __call__(self, text: str) -> list[int]:
        return encode_fragment(self._tokenizer, text)


def _eos(vocab: Vocabulary) -> list[int]:
    return list(vocab.eos_token_ids) or [0]


def _import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError:  # a base dependency; only a broken install gets here
        raise StructuredOutputError(
            "structured outputs need the llguidance package: pip install llguidance"
        ) from None
    return llguidance


def _grammar_text(llguidance: Any, spec: StructuredOutputs) -> str:
    """llguidance's grammar JSON for ``spec``; StructuredOutputError for unreadable input."""
    try:
        if spec.json_object:
            return llguidance.LLMatcher.grammar_from_json_schema(
                _ANY_JSON_OBJECT, defaults=JSON_OPTIONS
            )
        if spec.json_schema is not None:
            schema = spec.json_schema
            if isinstance(schema, str):
                schema = json.loads(schema)
            if not isinstance(schema, (dict, bool)):
                raise ValueError("a JSON schema must be a JSON object")
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        if spec.regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(spec.regex)
        if spec.choice is not None:
            if not spec.choice or not all(isinstance(c, str) and c for c in spec.choice):
                raise ValueError("choice must be a non-empty list of non-empty strings")
            return llguidance.grammar_from("choice", list(spec.choice))
        text = spec.grammar
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the grammar is empty")
        return llguidance.grammar_from("gbnf" if _GBNF_RULE.search(text) else "lark", text)
    except (ValueError, TypeError, RecursionError) as e:
        raise StructuredOutputError(_describe(spec, str(e)), _param(spec)) from None


def _describe(spec: StructuredOutputs, error: str) -> str:
    what = {
        "json_schema": "JSON schema",
        "json_object": "JSON object grammar",
        "regex": "regular expression",
        "choice": "choice list",
        "grammar": "grammar (Lark or GBNF)",
    }[spec.kind]
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return f"invalid {what}: {' '.join(lines[:4])[:500] or 'unknown error'}"


def _param(spec: StructuredOutputs) -> str:
    return "response_format" if spec.kind in ("json_schema", "json_object") else spec.kind


def _cache_key(spec: StructuredOutputs) -> str:
    value: Any = getattr(spec, spec.kind)
    if spec.kind == "json_schema" and not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, default=str)
    return f"{spec.kind}:{value if isinstance(value, str) else json.dumps(value)}"
