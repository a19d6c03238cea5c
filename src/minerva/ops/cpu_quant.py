"""y = x @ W^T on the CPU with W kept in its GGUF blocks: cpu_quant.c, compiled at first use.

The kernel quantizes each row of x to 8-bit blocks as llama.cpp does and sums integer block
products (AVX2 / VNNI where the CPU has them), with torch's OpenMP threads. `matmul` returns
None where it does not apply (a type without a kernel, no compiler, other devices, autograd),
and the caller (quant/gguf.py) takes its dequantize-then-matmul path instead.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from minerva.ops import native

SOURCE = Path(__file__).with_name("cpu_quant.c")
# GGML type id -> (values, bytes) per block: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K .. Q6_K,
# IQ4_NL, IQ4_XS (the file format's; quant/gguf_types.py holds the same table, a layer above)
GEOMETRY = {2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36)}
GEOMETRY |= {10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
GEOMETRY |= {20: (32, 18), 23: (256, 136)}
KERNEL_TYPES = frozenset(GEOMETRY)

_fn: list = []  # [ctypes function] once bound


def load() -> bool:
    """Build (once per cache key) and bind the kernel; False, logged once, when it cannot be."""
    lib = native.load(SOURCE)
    if lib is not None and not _fn:
        fn = lib.minerva_qgemm
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        fn.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_int]
        fn.restype = ctypes.c_int
        lib.minerva_qgemm_path.restype = ctypes.c_char_p
        _fn.append(fn)
        _fn.append(lib.minerva_qgemm_path().decode())
    return lib is not None


def entry():
    """The C function y = x @ W^T on the file's blocks (cpu_decode_step.c calls it), or None."""
    return _fn[0] if _fn or load() else None


def status() -> str | None:
    """None when the kernel is loaded (or not yet tried), else why it is off."""
    return native.problem(SOURCE)


def simd_path() -> str | None:
    """'avx2+vnni', 'avx2' or 'generic' once loaded."""
    return _fn[1] if _fn else None


def has_kernel(ggml_type: int) -> bool:
    return int(ggml_type) in KERNEL_TYPES and (bool(_fn) or load())


def matmul(x: torch.Tensor, data: torch.Tensor, ggml_type: int, out_features: int):
    """x float32 [M, K] @ W^T for W = `data` (uint8 [N, row_bytes] blocks of `ggml_type`) ->
    float32 [M, N]; None where the kernel does not apply."""
    if (
        int(ggml_type) not in KERNEL_TYPES
        or not (_fn or load())  # bound once: no lock on the per-token path
        or x.dtype != torch.float32
        or x.dim() != 2
        or not x.is_cpu
        or not data.is_cpu
        or torch.is_grad_enabled()
        and x.requires_grad
    ):
        return None
    x = x.contiguous()
    data = data.contiguous()
    m, k = x.shape
    block, nbytes = GEOMETRY[int(ggml_type)]
    if (
        k % block
        or data.dtype != torch.uint8
        or tuple(data.shape) != (out_features, k // block * nbytes)
    ):
        raise ValueError(
            f"x has {k} columns, which does not match weight blocks of shape {tuple(data.shape)}"
        )
    y = torch.empty(m, out_features, dtype=torch.float32)
    rc = _fn[0](
        int(ggml_type),
        data.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        m,
        out_features,
        k,
        torch.get_num_threads(),
    )
    return None if rc else y
