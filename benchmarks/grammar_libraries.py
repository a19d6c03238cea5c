"""xgrammar vs llguidance on Minerva's vocabularies: tokenizer set-up, schema compile time and
per-step token-mask time, driving each matcher through a valid JSON instance token by token.

    PYTHONPATH=src python benchmarks/grammar_libraries.py [--out benchmarks/results/grammar_libraries.json]

Vocabularies: the demo model's (4096, byte-level BPE) and llama.cpp's Llama-2 SentencePiece
test vocabulary (32000; scripts/fetch_vocab_vectors.py fetches it), plus Llama 3's (128256)
when present. Both libraries run single-threaded on the CPU. xgrammar is not a Minerva
dependency: ``pip install xgrammar`` (its torch / transformers requirements are met here) first.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from minerva.structured.vocab import Vocabulary, encode_fragment, vocabulary_of
from minerva.tokenizer import Tokenizer, tokenizer_from_gguf_file

VOCAB_DIR = Path.home() / ".cache/minerva/llama-vocab/0.3.36"


def fifty_properties() -> tuple[dict, dict]:
    kinds = [("string", "abc"), ("integer", 7), ("number", 2.5), ("boolean", True)]
    props, instance = {}, {}
    for i in range(50):
        kind, value = kinds[i % 4]
        props[f"field_{i}"] = {"type": kind}
        instance[f"field_{i}"] = value
    schema = {"type": "object", "properties": props, "required": list(props)}
    schema["additionalProperties"] = False
    return schema, instance


NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
NESTED_INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "role": "admin",
    "tags": ["math", "poetry"],
    "address": {"city": "London", "zip": "W1"},
}


def cases() -> list[tuple[str, dict, dict]]:
    schema50, instance50 = fifty_properties()
    return [("nested", NESTED, NESTED_INSTANCE), ("fifty_properties", schema50, instance50)]


def vocabularies() -> list[tuple[str, Tokenizer, Vocabulary]]:
    demo = Tokenizer.from_folder(Path(__file__).parents[1] / "src/minerva/demo_model")
    out = [("demo_4096", demo, vocabulary_of(demo, 4096, [demo.eos_token_id]))]
    for name, file in [("llama2_spm_32000", "llama-spm"), ("llama3_bpe_128256", "llama-bpe")]:
        path = VOCAB_DIR / f"ggml-vocab-{file}.gguf"
        if path.is_file():
            tok = tokenizer_from_gguf_file(path)
            out.append((name, tok, vocabulary_of(tok, tok.vocab_size, [tok.eos_token_id])))
    return out


def _allowed(mask: np.ndarray, size: int) -> np.ndarray:
    """Token ids whose bit is set in a [1, words] int32 bitmask."""
    bits = np.unpackbits(mask.reshape(-1).view(np.uint8), bitorder="little")[:size]
    return np.nonzero(bits)[0]


def _next_token(vocab: Vocabulary, mask: np.ndarray, rest: bytes) -> int:
    """The longest token the mask allows that spells the start of ``rest`` (EOS at the end)."""
    if not rest:
        return vocab.eos_token_ids[0]
    fits = [i for i in _allowed(mask, vocab.size) if rest.startswith(vocab.token_bytes[i])]
    return max((i for i in fits if vocab.token_bytes[i]), key=lambda i: len(vocab.token_bytes[i]))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def bench_llguidance(tok: Tokenizer, vocab: Vocabulary, schema: dict, text: bytes) -> dict:
    """Drives the matcher through ``text`` (llguidance only admits the canonical tokens of
    forced bytes, so the path is picked from its masks); returns the token path too."""
    import llguidance
    import llguidance.numpy as llnp

    t0 = time.perf_counter()
    wrapper = _LLGWrapper(tok, vocab)
    ll_tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), n_vocab=vocab.size)
    setup = _ms(t0)
    t0 = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    matcher = llguidance.LLMatcher(ll_tok, grammar)
    assert not matcher.is_error(), matcher.get_error()
    compile_ms = _ms(t0)
    mask = llnp.allocate_token_bitmask(1, vocab.size)
    steps, tokens, pos = [], [], 0
    while True:
        t0 = time.perf_counter()
        llnp.fill_next_token_bitmask(matcher, mask)
        steps.append(_ms(t0))
        token = _next_token(vocab, mask, text[pos:])
        tokens.append(token)
        assert matcher.consume_token(token), matcher.get_error()
        if pos == len(text):
            break
        pos += len(vocab.token_bytes[token])
    return {**_summary(setup, compile_ms, steps), "tokens": tokens}


class _LLGWrapper:
    """What llguidance.TokenizerWrapper reads from a tokenizer."""

    def __init__(self, tok: Tokenizer, vocab: Vocabulary) -> None:
        self.eos_token_id = vocab.eos_token_ids[0]
        self.bos_token_id = tok.bos_token_id
        self.tokens = vocab.token_bytes
        self.special_token_ids = sorted(vocab.special_ids)
        self._tok = tok

    def __call__(self, text: str) -> list[int]:
        return encode_fragment(self._tok, text)


def bench_xgrammar(tok: Tokenizer, vocab: Vocabulary, schema: dict, tokens: list[int]) -> dict:
    import torch
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(
        vocab.token_bytes, vocab_size=vocab.size, stop_token_ids=list(vocab.eos_token_ids)
    )
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    setup = _ms(t0)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(schema))
    matcher = xgr.GrammarMatcher(compiled)
    compile_ms = _ms(t0)
    mask = xgr.allocate_token_bitmask(1, vocab.size)
    steps = []
    for token in tokens:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)  # [1, words] int32
        steps.append(_ms(t0))
        assert token in _allowed(mask.numpy(), vocab.size), "valid token masked"
        assert matcher.accept_token(token)
    del torch
    return _summary(setup, compile_ms, steps)


def _summary(setup: float, compile_ms: float, steps: list[float]) -> dict:
    return {
        "tokenizer_setup_ms": round(setup, 3),
        "compile_ms": round(compile_ms, 3),
        "first_mask_ms": round(steps[0], 4),
        "mask_ms_mean": round(statistics.fmean(steps), 4),
        "mask_ms_p50": round(statistics.median(steps), 4),
        "mask_ms_p99": round(float(np.percentile(steps, 99)), 4),
        "num_steps": len(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/grammar_libraries.json")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per case")
    args = parser.parse_args()
    results = []
    for vocab_name, tok, vocab in vocabularies():
        for case, schema, instance in cases():
            text = json.dumps(instance).encode()
            runs = [bench_llguidance(tok, vocab, schema, text) for _ in range(args.repeats)]
            tokens = runs[0].pop("tokens")
            for r in runs[1:]:
                assert r.pop("tokens") == tokens
            xg_runs = [bench_xgrammar(tok, vocab, schema, tokens) for _ in range(args.repeats)]
            for lib, lib_runs in [("llguidance", runs), ("xgrammar", xg_runs)]:
                best = {k: min(r[k] for r in lib_runs) for k in lib_runs[0]}
                results.append({"vocab": vocab_name, "schema": case, "library": lib, **best})
                print(json.dumps(results[-1]))
    record = {
        "what": "grammar library choice: JSON-schema compile and per-step mask time (CPU, 1 thread)",
        "machine": platform.processor() or platform.machine(),
        "versions": {p: version(p) for p in ("llguidance", "xgrammar", "tokenizers")},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
