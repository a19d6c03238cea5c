"""Named starting points: ``--profile high-throughput | low-latency | memory-constrained``.
No torch.

A profile is the seed's example configuration of the same name, translated to Minerva's
fields. It sits just above the defaults, so every explicit setting (TOML, .env, environment,
flag) still wins over it, and ``config show`` names it as each value's source. The seed's
profiles also pick a quantization; these do not, because quantizing changes the model's
outputs and a GGUF file keeps its own type (set ``quantization`` yourself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE_ENV_VAR = "MINERVA_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str  # what it is for
    values: dict[str, Any] = field(default_factory=dict)  # flat field -> value
    why: dict[str, str] = field(default_factory=dict)  # flat field -> the reason, one line


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "high-throughput",
            "many concurrent users: the most tokens per second over all requests",
            {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "enable_prefix_caching": True,
             "enforce_eager": False},
            {
                "max_num_seqs": "many requests share each step (the seed: 32 running)",
                "max_num_batched_tokens": "bigger steps amortise the weight reads over more "
                "tokens",
                "enable_prefix_caching": "shared system prompts are computed once",
                "enforce_eager": "CUDA graphs cut the per-step launch cost",
            },
        ),
        Profile(
            "low-latency",
            "a few users: the shortest time to first token and between tokens",
            {"max_num_seqs": 4, "max_num_batched_tokens": 4096, "enforce_eager": False},
            {
                "max_num_seqs": "a small batch keeps each step short (the seed's batch of 4)",
                "max_num_batched_tokens": "a whole prompt of up to 4096 tokens is prefilled in "
                "one step (the seed's prefill chunk)",
                "enforce_eager": "CUDA graphs: the seed's graph capture",
            },
        ),
        Profile(
            "memory-constrained",
            "little memory: the smallest footprint that still serves",
            {"memory_fraction": 0.6, "max_num_seqs": 2, "max_num_batched_tokens": 512,
             "enable_prefix_caching": False},
            {
                "memory_fraction": "the seed's 60% of the device",
                "max_num_seqs": "the seed's batch of 2 (fewer activations per step)",
                "max_num_batched_tokens": "small prefill chunks keep the activation peak low",
                "enable_prefix_caching": "no cached prefixes held in the KV cache",
            },
        ),
    )
}  # fmt: skip


def profile_problem(name: str) -> str | None:
    """What is wrong with a profile name, else None."""
    if name in PROFILES:
        return None
    return f"unknown profile {name!r}: use one of {', '.join(PROFILES)}"
