"""Workloads: the prompts a benchmark sends and how many tokens each may generate.

A workload spec is ``KIND[:key=value,...]``:

* ``standard``: the four reference prompts (greeting ~20 output tokens, quantum computing ~100,
  Rust Fibonacci ~150, history of AI ~250);
* ``fixed:in=512,out=128``: every prompt ``in`` tokens long, ``out`` tokens out;
* ``random:in=512,out=128,range=0.5``: lengths uniform in ``[x*(1-range), x*(1+range)]``;
* ``shared-prefix:prefix=1024,in=32,out=64``: one long common system prompt plus a short
  distinct question per request (what prefix caching speeds up);
* ``jsonl:PATH`` (or a bare ``*.jsonl`` path): one JSON object per line with ``prompt`` or
  ``messages`` and optionally ``max_tokens``.

Synthetic text is made of common English words (about one token each in Llama / GPT / Mistral
vocabularies); servers report the exact prompt length in their usage counts. With
``vocab_size`` the synthetic kinds also carry exact-length random token ids for the offline
backends; given the model's ``tokenizer`` too, ids that come back unchanged from their text
(engines that take text prompts, mistral.rs, then run the very same tokens). Every request starts with different words, so prefix caching only helps where the
workload means it to (shared-prefix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minerva.errors import ConfigError

STANDARD_PROMPTS: list[tuple[str, str, int]] = [
    ("greeting", "Hello! How are you today?", 20),
    ("quantum", "Explain quantum computing in simple terms.", 100),
    ("rust-fibonacci", "Write a Rust function to calculate Fibonacci numbers.", 150),
    ("ai-history", "Summarize the history of artificial intelligence.", 256),
]
"""(name, prompt, max output tokens) of the standard workload."""

WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take "
    "get place made live where after back little only round man year came show every good me "
    "give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well"
).split()

KINDS = ("standard", "fixed", "random", "shared-prefix", "jsonl")


@dataclass
class BenchRequest:
    """One prompt of a workload."""

    prompt: str
    max_tokens: int
    messages: list[dict] | None = None
    """Chat form of the prompt (default: one user message holding ``prompt``)."""
    prompt_token_ids: list[int] | None = None
    """Exact token ids for offline backends (synthetic kinds with ``vocab_size`` only)."""
    name: str = ""

    def chat_messages(self) -> list[dict]:
        return self.messages or [{"role": "user", "content": self.prompt}]


@dataclass
class WorkloadSpec:
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: float) -> float:
        if key not in self.options:
            return default
        try:
            return float(self.options[key])
        except ValueError:
            raise ConfigError(
                f"workload {self.kind}: {key}={self.options[key]!r} is not a number"
            ) from None

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}:{opts}" if opts else self.kind


def parse_workload(text: str) -> WorkloadSpec:
    """'fixed:in=512,out=128' -> WorkloadSpec('fixed', {'in': '512', 'out': '128'})."""
    text = text.strip()
    if text.endswith(".jsonl") and not text.startswith("jsonl:"):
        text = "jsonl:" + text
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"unknown workload {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "jsonl":
        if not rest:
            raise ConfigError("workload jsonl needs a file: jsonl:PATH")
        return WorkloadSpec(kind, {"path": rest})
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"workload option {item!r} must look like key=value")
        options[key.strip()] = value.strip()
    return WorkloadSpec(kind, options)


def words_text(rng: np.random.Generator, num_words: int) -> str:
    """``num_words`` random common words (about one token each)."""
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), max(1, num_words)))


def build_workload(
    spec: WorkloadSpec | str,
    num_prompts: int | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
    vocab_size: int | None = None,
    tokenizer: Any = None,
) -> list[BenchRequest]:
    """The workload's requests (cycled or cut to ``num_prompts``); ``max_tokens`` overrides;
    ``tokenizer`` (with ``vocab_size``) makes the random ids text-stable."""
    spec = parse_workload(spec) if isinstance(spec, str) else spec
    rng = np.random.default_rng(seed)
    if spec.kind == "standard":
        base = [BenchRequest(p, n, name=name) for name, p, n in STANDARD_PROMPTS]
        requests = _cycle(base, num_prompts or len(base))
    elif spec.kind == "jsonl":
        requests = _cycle(load_jsonl(Path(spec.options["path"])), num_prompts)
    else:
        requests = _synthetic(spec, num_prompts or 16, rng, vocab_size)
        if tokenizer is not None and vocab_size:
            for r in requests:
                r.prompt_token_ids = text_stable_ids(tokenizer, r.prompt_token_ids, rng, vocab_size)
    if max_tokens is not None:
        for r in requests:
            r.max_tokens = max_tokens
    return requests


def _cycle(base: list[BenchRequest], n: int | None) -> list[BenchRequest]:
    n = len(base) if n is None else n
    return [
        BenchRequest(b.prompt, b.max_tokens, b.messages, b.prompt_token_ids, b.name)
        for b in (base[i % len(base)] for i in range(n))
    ]


def _lengths(spec: WorkloadSpec, key: str, default: int, n: int, rng) -> list[int]:
    mean = int(spec.get(key, default))
    if mean < 1:
        raise ConfigError(f"workload {spec.kind}: {key} must be at least 1, got {mean}")
    if spec.kind != "random":
        return [mean] * n
    spread = spec.get("range", 0.5)
    if not 0 <= spread < 1:
        raise ConfigError(f"workload random: range must be in [0, 1), got {spread}")
    low, high = max(1, int(mean * (1 - spread))), max(1, int(mean * (1 + spread)))
    return rng.integers(low, high + 1, n).tolist()


def _synthetic(spec: WorkloadSpec, n: int, rng, vocab_size: int | None) -> list[BenchRequest]:
    in_lens = _lengths(spec, "in", 32 if spec.kind == "shared-prefix" else 512, n, rng)
    out_lens = _lengths(spec, "out", 64 if spec.kind == "shared-prefix" else 128, n, rng)
    prefix_len = int(spec.get("prefix", 1024)) if spec.kind == "shared-prefix" else 0
    prefix = words_text(rng, prefix_len) if prefix_len else ""
    prefix_ids = _random_ids(rng, prefix_len, vocab_size) if vocab_size and prefix_len else []
    requests = []
    for i, (n_in, n_out) in enumerate(zip(in_lens, out_lens)):
        text = words_text(rng, n_in)
        ids = prefix_ids + _random_ids(rng, n_in, vocab_size) if vocab_size else None
        if prefix:
            messages = [{"role": "system", "content": prefix}, {"role": "user", "content": text}]
            requests.append(BenchRequest(prefix + "\n\n" + text, n_out, messages, ids, f"{i}"))
        else:
            requests.append(BenchRequest(text, n_out, None, ids, f"{i}"))
    return requests


def _random_ids(rng, n: int, vocab_size: int) -> list[int]:
    # Skip the lowest ids: special tokens (BOS/EOS/pad) usually live there.
    low = min(16, vocab_size // 4)
    return rng.integers(low, vocab_size, n).tolist()


def text_stable_ids(tokenizer: Any, ids: list[int], rng, vocab_size: int) -> list[int]:
    """Ids of the same length that encode(decode(ids)) gives back: a fixed point of re-encoding
    the random ids (cut, topped up), else common words padded with " the" to the length; best
    effort (the last candidate when neither holds)."""
    n = len(ids)
    for _ in range(8):
        again = _reencode(tokenizer, ids)
        if again == ids:
            return ids
        ids = again[:n] + _random_ids(rng, max(0, n - len(again)), vocab_size)
    text = ""
    while True:  # the most words that fit, then one-token fillers up to the length
        longer = text + " " + WORDS[int(rng.integers(0, len(WORDS)))]
        if len(tokenizer.encode(longer, add_special_tokens=False)) > n:
            break
        text = longer
    words = tokenizer.encode(text, add_special_tokens=False)
    while len(words) < n:  # fillers that add a token or so without merging into the text
        longer = next(
            (t for t in (text + f for f in _FILLERS) if len(tokenizer.encode(t, add_special_tokens=False)) <= n), None
        )  # fmt: skip
        if longer is None:
            break
        text, words = longer, tokenizer.encode(longer, add_special_tokens=False)
    return words if len(words) == n and _reencode(tokenizer, words) == words else ids


_FILLERS = (" the", " a", ".", ",", " ", "\n")


def _reencode(tokenizer: Any, ids: list[int]) -> list[int]:
    raw = getattr(tokenizer, "backend", tokenizer)  # its decode without space clean-up
    return tokenizer.encode(raw.decode(ids, skip_special_tokens=False), add_special_tokens=False)


def load_jsonl(path: Path) -> list[BenchRequest]:
    """Requests from a JSONL file: ``prompt`` or ``messages``, optional ``max_tokens``."""
    if not path.exists():
        raise ConfigError(f"workload file {str(path)!r} does not exist")
    requests = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({e})") from None
        messages = obj.get("messages")
        prompt = obj.get("prompt")
        if prompt is None and messages:
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"{path}:{lineno}: each line needs a 'prompt' or 'messages'")
        max_tokens = int(obj.get("max_tokens", obj.get("output_len", 128)))
        requests.append(BenchRequest(prompt, max_tokens, messages, None, f"line{lineno}"))
    if not requests:
        raise ConfigError(f"workload file {path} holds no requests")
    return requests
