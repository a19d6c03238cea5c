"""The layer glue on the CPU in one C call each (cpu_glue.c): add + RMSNorm, RoPE, SiLU * mul.

The same interface as ops.triton_ops, so the CPU kernel set (ops/kernels.py) plugs it into the
same places. The torch code in ops/torch_ops.py is the slow twin and the fallback for whatever the kernels do not take (other devices, autograd,
non-contiguous tensors, mixed dtypes).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from minerva.ops import native, torch_ops
from minerva.ops.torch_ops import apply_rope as torch_rope

__all__ = ["add_rms_norm", "apply_rope", "load", "silu_and_mul"]

SOURCE = Path(__file__).with_name("cpu_glue.c")
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
_norm: dict[torch.dtype, object] = {}
_rope: dict[torch.dtype, object] = {}
_silu_mul: dict[torch.dtype, object] = {}


def load() -> bool:
    """Build (once per cache key) and bind the kernels; False, logged once, when impossible."""
    lib = native.load(SOURCE)
    if lib is not None and not _norm:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        for dtype, suffix in _SUFFIX.items():
            if suffix == "f16" and not lib.minerva_glue_has_f16():
                continue
            norm = getattr(lib, f"minerva_add_rms_norm_{suffix}")
            norm.argtypes = [p] * 5 + [i64, i64, ctypes.c_float, ctypes.c_int]
            rope = getattr(lib, f"minerva_rope_{suffix}")
            rope.argtypes = [p] * 4 + [i64] * 5 + [ctypes.c_int]
            silu_mul = getattr(lib, f"minerva_silu_mul_{suffix}")
            silu_mul.argtypes = [p, p, i64, i64, ctypes.c_int]
            _norm[dtype], _rope[dtype], _silu_mul[dtype] = norm, rope, silu_mul
    return lib is not None


def entry(name: str, dtype: torch.dtype):
    """The C function `name` ("norm", "rope", "silu_mul") of `dtype`, or None."""
    return {"norm": _norm, "rope": _rope, "silu_mul": _silu_mul}[name].get(dtype)


def _same_layout(residual: torch.Tensor | None, x: torch.Tensor) -> bool:
    if residual is None:
        return True
    return residual.dtype == x.dtype and residual.shape == x.shape and residual.is_contiguous()


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(rms_norm(x + residual) * weight, x + residual) for [T, H] tensors."""
    fn = _norm.get(x.dtype)
    if (
        fn is None
        or not x.is_cpu
        or x.dim() != 2
        or not x.is_contiguous()
        or weight.dtype != x.dtype
        or weight.shape != x.shape[1:]
        or torch.is_grad_enabled()
        or not _same_layout(residual, x)
    ):
        return torch_ops.add_rms_norm(x, residual, weight, eps)
    rows, cols = x.shape
    if residual is None:
        out, res_out, res_ptr, res_out_ptr = torch.empty_like(x), None, None, None
    else:
        both = torch.empty(2, rows, cols, dtype=x.dtype)  # one allocation for the two outputs
        out, res_out = both[0], both[1]
        res_ptr, res_out_ptr = residual.data_ptr(), res_out.data_ptr()
    rc = fn(
        x.data_ptr(),
        res_ptr,
        weight.data_ptr(),
        out.data_ptr(),
        res_out_ptr,
        rows,
        cols,
        eps,
        torch.get_num_threads(),
    )
    if rc != 0:
        return torch_ops.add_rms_norm(x, residual, weight, eps)
    return out, res_out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D] (last dim contiguous, any row / head stride) -> rotated copy
    [T, heads, D]; cos / sign-folded sin [T, 1, D] as in torch_ops.apply_rope."""
    fn = _rope.get(x.dtype)
    if (
        fn is None
        or not x.is_cpu
        or x.dim() != 3
        or x.stride(-1) != 1
        or cos.dtype != x.dtype
        or sin_signed.dtype != x.dtype
        or not cos.is_contiguous()
        or not sin_signed.is_contiguous()
        or torch.is_grad_enabled()
    ):
        return torch_rope(x, cos, sin_signed)
    t, heads, d = x.shape
    if cos.numel() != t * d or sin_signed.numel() != t * d:
        return torch_rope(x, cos, sin_signed)
    out = torch.empty(t, heads, d, dtype=x.dtype)
    row, head = x.stride(0), x.stride(1)
    rc = fn(
        x.data_ptr(),
        cos.data_ptr(),
        sin_signed.data_ptr(),
        out.data_ptr(),
        t,
        heads,
        d,
        row,
        head,
        torch.get_num_threads(),
    )
    return out if rc == 0 else torch_rope(x, cos, sin_signed)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] (gate | up) -> silu(gate) * up [T, I], as torch_ops.silu_and_mul."""
    fn = _silu_mul.get(gate_up.dtype)
    if (
        fn is None
        or not gate_up.is_cpu
        or gate_up.dim() != 2
        or gate_up.shape[1] % 2
        or not gate_up.is_contiguous()
        or torch.is_grad_enabled()
    ):
        return torch_ops.silu_and_mul(gate_up)
    tokens, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(tokens, inter, dtype=gate_up.dtype)
    rc = fn(gate_up.data_ptr(), out.data_ptr(), tokens, inter, torch.get_num_threads())
    return out if rc == 0 else torch_ops.silu_and_mul(gate_up)
