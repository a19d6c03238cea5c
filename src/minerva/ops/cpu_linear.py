"""A faster `F.linear` for the CPU: cpu_gemv.c (compiled at first use, ops/native.py) for few
rows, and cpu_gemm.py's tiled fp32 GEMM for many rows of bf16 / fp16.

torch's CPU matrix-vector product streams bf16/fp16 weights at about half the memory bandwidth
(it has no fast path without AVX512_BF16) and slows down further for 2-64 rows. The kernel
streams the weights once in their own dtype and sums in fp32, with torch.get_num_threads()
threads of torch's own OpenMP pool. `linear` falls back to F.linear wherever the kernel does not
apply (other devices, autograd, unsupported dtypes, non-contiguous inputs) or could not be built.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F

from minerva.ops import cpu_gemm, cpu_ops, native

SOURCE = Path(__file__).with_name("cpu_gemv.c")
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

# Most rows of x the kernel takes. Measured on a 2-core AVX-512 Xeon (benchmarks/cpu_gemv.py
# --rows ...): in fp32 torch's GEMM wins from 64 rows on; in bf16/fp16, where torch has no fast
# path without AVX512_BF16, the kernel won at every length tried (2-8x at 8-512 rows).
MAX_ROWS = {torch.float32: 32, torch.bfloat16: 1 << 30, torch.float16: 1 << 30}
# From this many rows bf16 / fp16 products take cpu_gemm's tiled fp32 GEMM instead of the GEMV
# kernel (which still takes any row count: cpu_decode_step calls it directly). The crossover was
# measured with benchmarks/cpu_gemm.py (results/cpu_gemm.json) on a 2-core AVX2 EPYC.
GEMM_MIN_ROWS = {torch.bfloat16: 32, torch.float16: 32}

_kernels: dict[torch.dtype, object] = {}  # dtype -> ctypes function; empty until load()
_max_rows: dict[torch.dtype, int] = {}


def load() -> bool:
    """Build (once per cache key) and bind the kernel; False, logged once, when it cannot be."""
    lib = native.load(SOURCE)
    if lib is not None and not _kernels:
        bind(lib)
        cpu_gemm.load()  # its output step in C; without it the products round through torch
    return lib is not None


def status() -> str | None:
    """None when the kernel is loaded (or not yet tried), else why it is off."""
    return native.problem(SOURCE)


def bind(lib: ctypes.CDLL) -> None:
    sig = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    for dtype, suffix in _SUFFIX.items():
        if suffix == "f16" and not lib.minerva_gemv_has_f16():
            continue
        fn = getattr(lib, f"minerva_gemv_{suffix}")
        fn.argtypes, fn.restype = sig, ctypes.c_int
        _kernels[dtype] = fn
    _max_rows.update(MAX_ROWS)


def entry(dtype: torch.dtype):
    """The C function of `dtype` (cpu_decode_step.c calls it), or None."""
    return _kernels.get(dtype)


def _takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The C kernels take x [M, K] @ weight[N, K].T + bias as the tensors are."""
    return (
        x.dtype in _kernels
        and x.is_cpu
        and x.dim() == 2
        and weight.dtype == x.dtype
        and 0 < x.shape[0] <= _max_rows[x.dtype]
        and x.is_contiguous()
        and weight.is_contiguous()
        and not torch.is_grad_enabled()
        and weight.dim() == 2
        and weight.shape[1] == x.shape[1]
        and (
            bias is None
            or bias.dtype == x.dtype
            and bias.is_contiguous()
            and bias.shape == (weight.shape[0],)
        )
    )


def _gemm_rows(x: torch.Tensor) -> bool:
    """A product of this many rows takes cpu_gemm's GEMM rather than the GEMV kernel."""
    return x.shape[0] >= GEMM_MIN_ROWS.get(x.dtype, x.shape[0] + 1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear(x, weight, bias), through the C kernel where it applies."""
    if not _takes(x, weight, bias):  # torch raises its usual errors (shapes) in F.linear
        if x.dtype in _kernels and x.dim() > 2 and x.is_cpu:  # flatten the leading dims
            out = linear(x.reshape(-1, x.shape[-1]), weight, bias)
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, weight, bias)
    if _gemm_rows(x):
        return cpu_gemm.linear(x, weight, bias)
    (m, k), n = x.shape, weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    bias_ptr = None if bias is None else bias.data_ptr()
    if _kernels[x.dtype](
        weight.data_ptr(), x.data_ptr(), bias_ptr, y.data_ptr(), m, n, k, torch.get_num_threads()
    ):
        return F.linear(x, weight, bias)  # the kernel could not get scratch memory
    return y


def linear_silu_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """cpu_ops.silu_and_mul(linear(x, weight, bias)) for a gate_up weight [2I, K]: products
    that take cpu_gemm's one-tile GEMM apply SiLU * mul while rounding its output (the same
    bits); the rest run the two steps."""
    if _takes(x, weight, bias) and _gemm_rows(x):
        y = cpu_gemm.linear_silu_mul(x, weight, bias)
        if y is not None:
            return y
    return cpu_ops.silu_and_mul(linear(x, weight, bias))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """The kernel itself, for any number of rows (benchmarks); inputs must be eligible."""
    fn = _kernels[x.dtype]
    (m, k), n = x.shape, weight.shape[0]
    assert x.is_contiguous() and weight.is_contiguous() and weight.shape == (n, k)
    assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)
    y = torch.empty(m, n, dtype=x.dtype)
    b = None if bias is None else bias.contiguous().data_ptr()
    rc = fn(weight.data_ptr(), x.data_ptr(), b, y.data_ptr(), m, n, k, torch.get_num_threads())
    assert rc == 0
    return y
