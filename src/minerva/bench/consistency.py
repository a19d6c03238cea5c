"""Consistency: the same prompts, greedy, through several engines / servers / model formats,
and how far their outputs agree pair by pair.

Per pair and prompt: ``token_agreement`` is the fraction of positions holding the same token
(over the longer output), ``prefix_agreement`` the common prefix over the longer output (greedy
outputs that diverge once rarely meet again) and ``exact_match`` whether both are identical;
the report gives their means over prompts. Outputs are compared as token ids when every
participant has them, else as the ids of the returned text re-encoded with one tokenizer, else
as whitespace-separated words.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import httpx

from minerva.bench.http_client import Target, send_request
from minerva.bench.metrics import RequestRecord
from minerva.bench.protocols import GenParams
from minerva.bench.workloads import BenchRequest
from minerva.errors import MinervaError


def agreement(a: Sequence, b: Sequence) -> dict[str, float]:
    """Agreement of two outputs (lists of tokens or words)."""
    longest = max(len(a), len(b))
    if longest == 0:
        return {
            "token_agreement": 1.0, "prefix_agreement": 1.0, "exact_match": 1.0,
            "first_divergence": None,
        }  # fmt: skip
    same = sum(x == y for x, y in zip(a, b))
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {
        "token_agreement": same / longest,
        "prefix_agreement": prefix / longest,
        "exact_match": float(list(a) == list(b)),
        "first_divergence": None if list(a) == list(b) else prefix,
    }


def compare_all(outputs: dict[str, list[Sequence]], unit: str) -> list[dict]:
    """Mean agreement of every pair of participants over their outputs (same prompt order)."""
    rows = []
    for (na, outs_a), (nb, outs_b) in itertools.combinations(outputs.items(), 2):
        per_prompt = [agreement(x, y) for x, y in zip(outs_a, outs_b)]
        n = max(len(per_prompt), 1)
        row = {"a": na, "b": nb, "unit": unit, "num_prompts": len(per_prompt)}
        for key in ("token_agreement", "prefix_agreement", "exact_match"):
            row[key] = sum(p[key] for p in per_prompt) / n
        diverged = [p["first_divergence"] for p in per_prompt if p["first_divergence"] is not None]
        row["first_divergence"] = min(diverged) if diverged else None
        row["num_diverged"] = len(diverged)
        row["per_prompt"] = per_prompt
        rows.append(row)
    return rows


def to_units(texts: list[str], tokenizer=None) -> tuple[list[list], str]:
    """Texts -> token ids with ``tokenizer`` (anything with ``encode``), else words."""
    if tokenizer is not None:
        return [tokenizer.encode(t, add_special_tokens=False) for t in texts], "tokens"
    return [t.split() for t in texts], "words"


async def http_outputs(
    client: httpx.AsyncClient, target: Target, requests: list[BenchRequest], params: GenParams
) -> list[str]:
    """Each prompt's text from a target, one request at a time; a failure raises."""
    texts = []
    for i, req in enumerate(requests):
        record = await send_request(
            client, target, req, params, RequestRecord(target.name, "-", 0, i)
        )
        if record.error:
            raise MinervaError(f"target {target.name}, prompt {i}: {record.error}")
        texts.append(record.output_text)
    return texts
