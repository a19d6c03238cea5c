"""The device side of programmatic dependent launch (attention/pdl.py): what a kernel launched
with it calls. PDL is the kernel's `PDL: tl.constexpr`, from `pdl.mode()`: 0 off, 1 wait for
the previous kernel then let the next one launch, 2 let the next one launch first, then wait.
Imports triton: load only on CUDA."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def pdl_launch_next(PDL: tl.constexpr):
    """Mode 2: let the next kernel's programs be scheduled now (call before pdl_wait)."""
    if PDL == 2:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait until the previous kernel has finished and its writes are visible; in mode 1 then
    let the next kernel launch. Call before reading anything an earlier kernel wrote."""
    if PDL != 0:
        tl.extra.cuda.gdc_wait()
    if PDL == 1:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_sync(PDL: tl.constexpr):
    """pdl_launch_next then pdl_wait: for kernels with nothing to do before the wait."""
    pdl_launch_next(PDL)
    pdl_wait(PDL)
