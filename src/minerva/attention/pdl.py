"""Programmatic dependent launch (PDL) for the Triton kernels of a step, on Hopper and newer.

A batch-1 decode step is a chain of ~200 small kernels; between two of them the GPU drains
the first grid, then launches the second (a few microseconds each, even inside a CUDA graph).
With PDL a kernel is launched while its predecessor still runs: its programs are scheduled,
set up, and wait at `griddepcontrol.wait` until the predecessor's writes are visible. Each
kernel also signals `launch_dependents` as soon as it has waited, so the next one can be
scheduled into SM slots its own last wave leaves free. Tried and slower on the H100: GEMVs
prefetching their weight rows into L2 before the wait
(benchmarks/results/decode_variants_tinyllama-1.1b_h100_prefetch.json), and signalling before
the wait with GEMVs loading their first weight tile early (7B 176.4 vs 181.1 tok/s in one
session; see the README and decode_variants_*_h100_pdl_modes.json).

Rule that keeps it correct: every kernel launched with PDL calls `wait` in every program before
it reads anything an earlier kernel wrote, or writes anything at all. Then kernel N+1 passing
its wait implies kernel N finished, which passed its own wait, and so on down the chain.

Kernels take `USE_PDL: tl.constexpr` and are launched with `**launch_kwargs()`; off (the
default, and on GPUs before sm_90, where the instructions do not exist) they are unchanged.
Set once per process, before CUDA graphs are captured (LLMEngine does this from the config).
The flag is global, and either setting is safe for any kernel: a graph keeps the launches it
captured, and a kernel launched plainly ignores the wait.
"""

from __future__ import annotations

_enabled = False


def set_enabled(enabled: bool) -> None:
    """Turn PDL on or off for kernels launched from now on (graphs keep what they captured)."""
    global _enabled
    _enabled = bool(enabled)


def enabled() -> bool:
    """Whether kernels are launched with PDL (their USE_PDL constexpr)."""
    return _enabled


def launch_kwargs() -> dict:
    """Extra launch arguments for a Triton kernel: `launch_pdl` when PDL is on."""
    return {"launch_pdl": True} if _enabled else {}
