"""Running engines step by step and reading their speculation counters: what spec_bench.py's
parts (and the trained pair's, spec_pair.py) time."""

from __future__ import annotations

import gc
import time

import torch

from minerva import SamplingParams


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(llm) -> None:
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run(
    engine, prompts, n, device, step_times=None, params=None
) -> tuple[float, float, list[list[int]]]:
    """All prompts at once; (seconds from the first token to the last, total seconds, outputs).
    step_times: a dict collecting each step's seconds by kind ('decode', 'verify', 'other').
    params: one SamplingParams per prompt (default: greedy, n tokens, EOS ignored)."""
    params = params or [greedy(n)] * len(prompts)
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    tokens = {rid: [] for rid in ids}
    sync(device)
    start = time.perf_counter()
    first = None
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        outs = engine.step()
        sync(device)
        dt = time.perf_counter() - t
        if step_times is not None:
            out = engine.last_scheduler_output
            kind = "verify" if out.scheduled_spec_token_ids else "other"
            if kind == "other" and set(out.num_scheduled_tokens) == {1}:
                kind = "decode"
            step_times.setdefault(kind, []).append(dt)
        for o in outs:
            tokens[o.request_id] = list(o.outputs[0].token_ids)
        if first is None and any(tokens.values()):
            first = time.perf_counter()
    end = time.perf_counter()
    return end - (first or start), end - start, [tokens[r] for r in ids]


def spec_counters(llm) -> dict:
    """A snapshot of the engine's speculation counters ({} without speculation)."""
    s = llm.engine.stats().spec_decode
    if s is None:
        return {}
    return dict(
        s.as_dict(),
        emitted=s.num_emitted_tokens,
        drafts_per_position=list(s.drafts_per_position),
        accepted_per_position=list(s.accepted_per_position),
    )


def spec_delta(a: dict, b: dict, per_position: bool = False) -> dict:
    """What happened between two snapshots: drafts, accepted, acceptance rate, mean accepted
    length (tokens per verify step), and with per_position the acceptance at each position."""
    if not b:
        return {}
    drafts = b["num_draft_tokens"] - a.get("num_draft_tokens", 0)
    accepted = b["num_accepted_tokens"] - a.get("num_accepted_tokens", 0)
    steps = b["num_verify_steps"] - a.get("num_verify_steps", 0)
    emitted = b["emitted"] - a.get("emitted", 0)
    delta = {
        "draft_tokens": drafts,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafts if drafts else 0.0,
        "mean_accepted_length": emitted / steps if steps else 0.0,
    }
    if per_position:
        d0, a0 = a.get("drafts_per_position", []), a.get("accepted_per_position", [])
        rates = []
        for j, (d, acc) in enumerate(zip(b["drafts_per_position"], b["accepted_per_position"])):
            d -= d0[j] if j < len(d0) else 0
            acc -= a0[j] if j < len(a0) else 0
            rates.append(acc / d if d else 0.0)
        delta["acceptance_rate_per_position"] = rates
    return delta
