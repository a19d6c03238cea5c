"""Programmatic dependent launch (PDL) for the Triton kernels of a step, on Hopper and newer.

A batch-1 decode step is a chain of ~200 small kernels; between two of them the GPU drains
the first grid, then launches the second (a few microseconds each, even inside a CUDA graph).
With PDL a kernel is launched while its predecessor still runs: its programs are scheduled,
set up, and wait at `griddepcontrol.wait` until the predecessor's writes are visible. Each
kernel also signals `launch_dependents` as soon as it has waited, so the next one can be
scheduled into SM slots its own last wave leaves free. Tried and slower on the H100: GEMVs
prefetching their weight rows into L2 before the wait
(benchmarks/results/decode_variants_tinyllama-1.1b_h100_prefetch.json), and signalling before
the wait with GEMVs loading their first weight tile early (see the README and
decode_variants_*_h100_pdl_modes.json).

Rule that keeps it correct: every kernel launched with PDL calls `wait` in every program before
it reads anything an earlier kernel wrote, or writes anything at all. Then kernel N+1 passing
its wait implies kernel N finished, which passed its own wait, and so on down the chain.

Kernels take `USE_PDL: tl.constexpr` and are launched with `**launch_kwargs(pdl)`; off (the
default, and on GPUs before sm_90, where the instructions do not exist) they are unchanged.
PDL is a per-runner setting: the kernel set (ops/kernels.py) and the Triton attention backend
carry `pdl` and pass it to every launch; either setting is safe for any kernel (a graph keeps
the launches it captured, and a kernel launched plainly ignores the wait).
"""

from __future__ import annotations

_PDL_KWARGS = {"launch_pdl": True}
_PLAIN_KWARGS: dict = {}


def launch_kwargs(pdl: bool) -> dict:
    """Extra launch arguments for a Triton kernel: `launch_pdl` when PDL is on."""
    return _PDL_KWARGS if pdl else _PLAIN_KWARGS
