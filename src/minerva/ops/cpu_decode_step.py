"""A whole CPU decode step in one C call (cpu_decode_step.c): the structs it reads, mirrored
in ctypes, and `DecodeStep`, which holds a model's plan and runs it.

The plan is plain data: per layer, the norms' weights and each linear layer's groups (a dense
float32 weight, or GGUF blocks in the x8 or the file layout). models/llama_cpu_step.py builds it
from a loaded model; the kernels it calls are the ones the layered path calls (the other C
libraries' entry points, passed as function pointers), so both give the same logits.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minerva.ops import cpu_linear, cpu_ops, cpu_quant, cpu_quant_x8, native

SOURCE = Path(__file__).with_name("cpu_decode_step.c")
DENSE, X8, FILE = 0, 1, 2  # how a group's weight is stored
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""The model dtypes the step runs (activations, norms, RoPE tables, KV cache); GGUF groups
only in float32 (their kernels take float32 rows)."""
MAX_GROUPS = 4
MAX_ROWS = 32
"""Most decode rows a step takes (the dense kernel's row limit in float32, cpu_linear.py)."""

p, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64


class Group(ctypes.Structure):
    _fields_ = [("kind", i32), ("type", i32), ("rows", i64), ("w", p)]


class LinearPlan(ctypes.Structure):
    _fields_ = [
        ("in_features", i64),
        ("out_features", i64),
        ("n_groups", i32),
        ("groups", Group * MAX_GROUPS),
        ("bias", p),
    ]


class LayerPlan(ctypes.Structure):
    _fields_ = [
        ("qkv", LinearPlan),
        ("o", LinearPlan),
        ("gate_up", LinearPlan),
        ("down", LinearPlan),
        ("in_norm", p),
        ("post_norm", p),
        ("window", i64),
        ("q_norm", p),
        ("k_norm", p),
    ]


class Kernels(ctypes.Structure):
    _fields_ = [
        (name, p)
        for name in ("x8", "qgemm", "gemv", "norm", "rope", "silu_mul", "attend", "write_kv")
    ]


class ModelPlan(ctypes.Structure):
    _fields_ = [
        *((name, i64) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim")),
        *((name, i64) for name in ("intermediate", "vocab", "max_positions")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("dtype", i32),
        ("layer", ctypes.POINTER(LayerPlan)),
        ("final_norm", p),
        ("head", LinearPlan),
        ("cos", p),
        ("sin", p),
        ("k", Kernels),
        ("embed", p),
        ("embed_rows", i64),
        ("embed_type", i32),
        ("embed_row_bytes", i64),
        ("team", i32),
    ]


_lib: list = []


def _bound():
    if _lib:
        return _lib[0]
    lib = native.load(SOURCE)
    if lib is None:
        return None
    lib.minerva_step_work_bytes.argtypes = [ctypes.POINTER(ModelPlan), i64]
    lib.minerva_step_work_bytes.restype = i64
    lib.minerva_decode_step.argtypes = [ctypes.POINTER(ModelPlan), p, i64, i64, p, p, i64]
    lib.minerva_decode_step.argtypes += [p] * 3 + [i64] + [p] * 3 + [ctypes.c_int]
    lib.minerva_step_dequant_rows.argtypes = [ctypes.c_int, p, i64, i64, i64, p]
    lib.minerva_step_dequant_supports.argtypes = [ctypes.c_int]
    lib.minerva_step_in_one_region.argtypes = [ctypes.POINTER(ModelPlan), ctypes.c_int]
    _lib.append(lib)
    return lib


def embeds_blocks(ggml_type: int) -> bool:
    """Whether the step gathers a token embedding kept in GGUF blocks of this type itself
    (dequant_row.h); otherwise the caller embeds (models/embedding.py, in torch)."""
    lib = _bound()
    return lib is not None and bool(lib.minerva_step_dequant_supports(int(ggml_type)))


def dequantize_rows(rows: torch.Tensor, ggml_type: int, cols: int) -> torch.Tensor | None:
    """uint8 [n, row_bytes] of GGUF blocks -> float32 [n, cols] through the step's own
    dequantization (its twin: quant/gguf_dequant.dequantize); None for a type it lacks."""
    lib = _bound()
    if lib is None or not embeds_blocks(ggml_type):
        return None
    rows = rows.contiguous()
    out = torch.empty(rows.shape[0], cols, dtype=torch.float32)
    rc = lib.minerva_step_dequant_rows(
        int(ggml_type), rows.data_ptr(), rows.shape[0], rows.shape[1], cols, out.data_ptr()
    )
    return out if rc == 0 else None


def kernels(attention: tuple, dtype: torch.dtype) -> Kernels | None:
    """The entry points the step calls for a `dtype` model, from the libraries the layered
    path uses (None where one of them is not built); `attention`: the CPU attention backend's
    (attend, write_kv) of that dtype."""
    if dtype not in DTYPES or _bound() is None or not (cpu_linear.load() and cpu_ops.load()):
        return None
    x8, qgemm = cpu_quant_x8.entry(), cpu_quant.entry()
    gemv = cpu_linear.entry(dtype)
    glue = [cpu_ops.entry(name, dtype) for name in ("norm", "rope", "silu_mul")]
    ptrs = [x8, qgemm, gemv, *glue, *attention]
    if any(f is None for f in ptrs[2:]):  # the quantized ones are needed only by their groups
        return None
    return Kernels(*(ctypes.cast(f, p).value if f is not None else None for f in ptrs))


@dataclass
class DecodeStep:
    """A model's plan, the tensors it points into (kept alive here) and a scratch buffer."""

    plan: ModelPlan = field(repr=False)
    layers: ctypes.Array = field(repr=False)
    keep: list[torch.Tensor] = field(repr=False)
    dtype: torch.dtype
    kv_dtype: torch.dtype | None = None  # the KV cache's (None: the model's dtype)
    _work: torch.Tensor | None = field(default=None, repr=False)
    _work_rows: int = field(default=0, repr=False)  # the most rows _work holds
    _kv: tuple[int, ...] = field(default=(), repr=False)
    _kv_array: ctypes.Array | None = field(default=None, repr=False)

    @property
    def embeds(self) -> bool:
        """Whether the step gathers the token embeddings itself (run with x=None, ids)."""
        return bool(self.plan.embed)

    def run(
        self,
        x: torch.Tensor | None,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Logits [M, vocab] float32 of M decode rows (x: their embeddings [M, hidden]; or x
        None and `ids` [M] int64, which the step embeds), or None where the inputs do not fit
        the kernel (the caller takes the layered path)."""
        if x is None:
            if ids is None or not self.embeds or ids.dtype != torch.int64:
                return None
            ids = ids.contiguous()
            m, x_ptr, ids_ptr = ids.shape[0], None, ids.data_ptr()
        elif x.dtype != self.dtype or not x.is_contiguous():
            return None
        else:
            m, x_ptr, ids_ptr = x.shape[0], x.data_ptr(), None
        if (
            m > MAX_ROWS
            or positions.dtype != torch.int64
            or slots.dtype != torch.int64
            or block_tables.dtype != torch.int32
            or seq_lens.dtype != torch.int32
            or block_tables.stride(1) != 1
            or not (positions.is_contiguous() and slots.is_contiguous())
            or not seq_lens.is_contiguous()
        ):
            return None
        lib = _lib[0]
        kv = self._kv_pointers(kv_caches)
        if kv is None:
            return None
        if m > self._work_rows:  # sized once per larger batch, not every step
            need = lib.minerva_step_work_bytes(ctypes.byref(self.plan), m)
            self._work, self._work_rows = torch.empty(need, dtype=torch.uint8), m
        cache = kv_caches[0]
        logits = torch.empty(m, self.plan.vocab, dtype=torch.float32)
        rc = lib.minerva_decode_step(
            ctypes.byref(self.plan), kv, cache.shape[1], cache.shape[2], x_ptr, ids_ptr, m,
            positions.data_ptr(), slots.data_ptr(), block_tables.data_ptr(),
            block_tables.stride(0), seq_lens.data_ptr(), logits.data_ptr(),
            self._work.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return logits if rc == 0 else None

    def in_one_region(self, threads: int) -> bool:
        """Whether a step of `threads` threads runs in one OpenMP region (plan.team, and every
        kernel it calls has a team mode), rather than one region per kernel."""
        return bool(_lib[0].minerva_step_in_one_region(ctypes.byref(self.plan), threads))

    def _kv_pointers(self, kv_caches: list[torch.Tensor]) -> ctypes.Array | None:
        """The layers' cache pointers as a C array (rebuilt only when the caches change)."""
        key = tuple(c.data_ptr() for c in kv_caches)
        if key != self._kv:
            first = kv_caches[0]
            shape = (2, first.shape[1], first.shape[2], self.plan.kv_heads, self.plan.head_dim)
            if len(kv_caches) != self.plan.layers or any(
                c.dtype != (self.kv_dtype or self.dtype)
                or tuple(c.shape) != shape
                or not c.is_contiguous()
                for c in kv_caches
            ):
                return None
            self._kv, self._kv_array = key, (p * len(key))(*key)
        return self._kv_array
