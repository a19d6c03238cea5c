"""spec_bench.py's `pair` part: a trained target of the demo family (scripts/train_demo_model.py
--shape target) with the bundled demo model as its draft, the honest acceptance figures.

Batch 1, each prompt alone (held-out documents to continue and held-out headings asked as the
corpus' chat questions): plain decoding against draft speculation at each K on every step, and
at the main K with the governor (the default); greedy and sampled (temperature 0.7, one seed
per prompt). Engines take turns in rounds (order reversed every other round), medians of the
rounds. The draft alone is timed too (its cost per token beside the target's). The outputs of
every speculative engine are compared with plain decoding's (greedy and seeded sampling alike).
Minerva's draft proposes greedily (one-hot q), so a sampled draft is accepted with the target's
probability of the draft's argmax: sampled acceptance is lower than greedy.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from spec_runs import free, run, spec_counters, spec_delta

from minerva import SamplingParams

ALWAYS = {"speculative_adaptive": False}
DOC_WORDS = 40
"""A document prompt: the first words of a held-out paragraph."""
QUESTIONS = ("Tell me about {h}.", "Explain {h}.", "What should I know about {h}?")
"""Phrasings of the corpus' chat examples (scripts/build_demo_corpus.py)."""
TEMPERATURE = 0.7


def heldout_prompts(tokenizer, text: str, n: int) -> list[tuple[str, list[int]]]:
    """(kind, ids): n // 2 documents, the rest chats, spread over held-out text."""
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    paragraphs = [b for b in blocks if len(b) > 300]
    headings = [
        b
        for b, nxt in zip(blocks, blocks[1:])
        if len(b.split()) <= 8 and "\n" not in b and b[-1] not in ".:" and len(nxt) > 100
    ]
    n_doc = n // 2
    prompts = []
    for i in range(n_doc):
        words = paragraphs[i * len(paragraphs) // n_doc].split()[:DOC_WORDS]
        prompts.append(("doc", tokenizer.encode(" ".join(words))))
    for i in range(n - n_doc):
        h = headings[i * len(headings) // (n - n_doc)]
        h = h[0].lower() + h[1:] if len(h) > 1 and h[0].isupper() and h[1].islower() else h
        question = QUESTIONS[i % len(QUESTIONS)].format(h=h)
        prompts.append(("chat", tokenizer.encode_chat([{"role": "user", "content": question}])))
    return prompts


def sampling(mode: str, n: int, prompt_index: int) -> SamplingParams:
    """Fixed length (EOS ignored) so that every engine decodes the same number of tokens."""
    if mode == "greedy":
        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return SamplingParams(
        max_tokens=n, temperature=TEMPERATURE, seed=1000 + prompt_index, ignore_eos=True
    )


def batch1(llm, prompts: list[list[int]], n: int, device: str, mode: str):
    """Each prompt alone: (decode tokens/s after each first token, outputs)."""
    span, tokens, outs = 0.0, 0, []
    for i, prompt in enumerate(prompts):
        s, _, out = run(llm.engine, [prompt], n, device, params=[sampling(mode, n, i)])
        span, tokens = span + s, tokens + len(out[0]) - 1
        outs.append(out[0])
    return tokens / span, outs


def pair_engines(make_target, make_draft, draft_folder: str, ks: list[int], k: int) -> dict:
    """plain, K on every step for each K, the main K with the governor, the draft alone."""

    def spec(kk: int, **kw):  # fmt: skip
        return make_target(
            speculative_method="draft", draft_model=draft_folder, num_speculative_tokens=kk, **kw
        )

    engines = {"plain": make_target()}
    engines |= {f"k{kk}": spec(kk, **ALWAYS) for kk in ks}
    engines[f"k{k}_adaptive"] = spec(k)
    engines["draft_alone"] = make_draft()
    return engines


def measure_mode(engines: dict, prompts, n: int, device: str, mode: str, repeats: int) -> dict:
    """Rounds over all engines; per engine tokens/s median, speed-up over plain, acceptance."""
    for llm in engines.values():  # warm-up: first-call costs (graphs, compiles) out of the rounds
        batch1(llm, prompts[:1], 8, device, mode)
    before = {name: spec_counters(llm) for name, llm in engines.items()}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    outputs: dict[str, list] = {}
    names = list(engines)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            rate, outs = batch1(engines[name], prompts, n, device, mode)
            rates[name].append(rate)
            outputs[name] = outs
    plain = statistics.median(rates["plain"])
    rows = {}
    for name, llm in engines.items():
        med = statistics.median(rates[name])
        rows[name] = {"tok_s": med, "speedup": med / plain, "runs_tok_s": rates[name]}
        rows[name] |= spec_delta(before[name], spec_counters(llm), per_position=True)
    rows["equal_to_plain"] = output_equality(outputs)
    return rows


def output_equality(outputs: dict) -> dict:
    """Each speculative engine's tokens against plain decoding's, prompt by prompt: equal, or
    the first position that differs. Greedy and seeded sampling both give plain decoding's
    tokens (spec/rejection_sampler.py) up to near-ties that the verify step's other matmul
    shapes can flip."""
    plain = outputs["plain"]
    result = {}
    for name, outs in outputs.items():
        if name in ("plain", "draft_alone"):
            continue
        first_diff = [first_difference(a, b) for a, b in zip(plain, outs)]
        result[name] = {"equal": all(d is None for d in first_diff), "first_diff": first_diff}
    result["all_equal"] = all(v["equal"] for v in result.values())
    return result


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def part_pair(make_target, make_draft, draft_folder, prompts, ks, k, n, device, repeats) -> dict:
    """Greedy and sampled rows for every engine, the prompts' shapes, the pair's sizes."""
    ids = [p for _, p in prompts]
    engines = pair_engines(make_target, make_draft, str(draft_folder), ks, k)
    try:
        result = {
            "k": k,
            "ks": ks,
            "tokens": n,
            "prompts": [{"kind": kind, "tokens": len(p)} for kind, p in prompts],
        }
        for mode in ("greedy", "sampled"):
            result[mode] = measure_mode(engines, ids, n, device, mode, repeats)
    finally:
        for name in list(engines):
            free(engines.pop(name))
    return result


def summary(result: dict) -> str:
    """A short table: engine, greedy and sampled tokens/s, speed-up, acceptance."""
    lines = [f"{'engine':>14} {'mode':>8} {'tok/s':>8} {'speedup':>8} {'accept':>7} {'len':>5}"]
    for mode in ("greedy", "sampled"):
        for name, row in result[mode].items():
            if "tok_s" not in row:
                continue
            accept = f"{row['acceptance_rate']:.2f}" if "acceptance_rate" in row else "-"
            length = f"{row['mean_accepted_length']:.2f}" if "acceptance_rate" in row else "-"
            lines.append(
                f"{name:>14} {mode:>8} {row['tok_s']:8.1f} {row['speedup']:8.2f} "
                f"{accept:>7} {length:>5}"
            )
    equal = [result[mode]["equal_to_plain"]["all_equal"] for mode in ("greedy", "sampled")]
    lines.append(
        f"speculative outputs equal plain decoding's: greedy {equal[0]}, sampled {equal[1]}"
    )
    return "\n".join(lines)


def target_facts(folder: Path) -> dict:
    """The target's shape and training record (train_log.json, when the folder has one)."""
    import json

    config = json.loads((folder / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    facts = {key: config[key] for key in keys}
    log = folder / "train_log.json"
    if log.is_file():
        record = json.loads(log.read_text())
        keep = ("num_parameters", "steps", "kept_step", "heldout_perplexity", "final_val_loss")
        facts |= {key: record.get(key) for key in keep}
    return facts
