"""GGUF blocks in the CPU's interleaved "x8" layout (cpu_quant_x8.c), compiled at first use.

`repack` rewrites a weight's rows 8 at a time (same bytes, another order) so that the matmul
handles 8 rows per vector; `unpack` gives the file bytes back exactly (the dequantize twin and
exports read those); `matmul` is y = x @ W^T on the repacked bytes. Types and CPUs without the
layout (`supports` False) keep the file layout and ops/cpu_quant.py's kernel.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from minerva.ops import native

SOURCE = Path(__file__).with_name("cpu_quant_x8.c")
LAYOUT_VERSION = 1
"""Bump whenever `repack`'s output changes: the on-disk weight cache (quant/x8_cache.py) keys
its files on it, so files of an older layout are rebuilt, never read."""
# Q4_0, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS
GEOMETRY = {2: (32, 18), 6: (32, 22), 7: (32, 24), 8: (32, 34)}
GEOMETRY |= {12: (256, 144), 13: (256, 176), 14: (256, 210), 20: (32, 18), 23: (256, 136)}

_lib: list = []  # [the library] once bound


def _bound():
    if _lib:
        return _lib[0]
    lib = native.load(SOURCE)
    if lib is None:
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.minerva_x8_qgemm.argtypes = [ctypes.c_int, p, p, p, i64, i64, i64, ctypes.c_int]
    for name in ("minerva_x8_repack", "minerva_x8_unpack"):
        getattr(lib, name).argtypes = [ctypes.c_int, p, p, i64, i64, ctypes.c_int]
    lib.minerva_x8_supports.argtypes = [ctypes.c_int]
    lib.minerva_x8_qgemm_ld.argtypes = [ctypes.c_int, p, p, p, i64, i64, i64, i64, ctypes.c_int]
    _lib.append(lib)
    return lib


def entry():
    """The C function y = x @ W^T with a row stride for y (cpu_decode_step.c calls it), or None."""
    lib = _bound()
    return None if lib is None else lib.minerva_x8_qgemm_ld


def status() -> str | None:
    """None when the library is loaded (or not yet tried), else why it is off."""
    return native.problem(SOURCE)


def supports(ggml_type: int, rows: int, cols: int) -> bool:
    """Whether a [rows, cols] weight of this type can take the x8 layout on this CPU."""
    geometry = GEOMETRY.get(int(ggml_type))
    if geometry is None or rows % 8 or cols % geometry[0]:
        return False
    lib = _bound()
    return lib is not None and bool(lib.minerva_x8_supports(int(ggml_type)))


def _convert(fn_name: str, data: torch.Tensor, ggml_type: int, cols: int, out=None):
    data = data.contiguous()
    out = torch.empty_like(data) if out is None else out
    lib = _bound()
    if lib is None or out.shape != data.shape or not out.is_contiguous():
        raise ValueError("x8 conversion needs the C library and an output of the same shape")
    rc = getattr(lib, fn_name)(
        int(ggml_type), data.data_ptr(), out.data_ptr(), data.shape[0], cols,
        torch.get_num_threads(),
    )  # fmt: skip
    if rc:
        raise ValueError(f"cannot convert a {tuple(data.shape)} weight of type {ggml_type}")
    return out


def repack(data: torch.Tensor, ggml_type: int, cols: int, out=None) -> torch.Tensor:
    """File blocks uint8 [rows, row_bytes] -> the x8 layout (a new tensor, or `out`)."""
    return _convert("minerva_x8_repack", data, ggml_type, cols, out)


def unpack(data: torch.Tensor, ggml_type: int, cols: int) -> torch.Tensor:
    """The x8 layout -> the file's blocks, byte for byte."""
    return _convert("minerva_x8_unpack", data, ggml_type, cols)


def matmul(x: torch.Tensor, data: torch.Tensor, ggml_type: int, out_features: int):
    """x float32 [M, K] @ W^T for W = `data` in the x8 layout -> float32 [M, N]; None where the
    kernel does not apply (the caller unpacks and takes the twin)."""
    lib = _bound()
    if (
        lib is None
        or x.dtype != torch.float32
        or x.dim() != 2
        or not x.is_cpu
        or torch.is_grad_enabled()
        and x.requires_grad
    ):
        return None
    x = x.contiguous()
    m, k = x.shape
    block, nbytes = GEOMETRY[int(ggml_type)]
    if k % block or tuple(data.shape) != (out_features, k // block * nbytes):
        raise ValueError(
            f"x has {k} columns, which does not match weight blocks of shape {tuple(data.shape)}"
        )
    y = torch.empty(m, out_features, dtype=torch.float32)
    rc = lib.minerva_x8_qgemm(
        int(ggml_type), data.data_ptr(), x.data_ptr(), y.data_ptr(), m, out_features, k,
        torch.get_num_threads(),
    )  # fmt: skip
    return None if rc else y
