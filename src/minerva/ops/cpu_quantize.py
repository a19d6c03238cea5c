"""K-quant quantizers in C (cpu_quantize.c), compiled at first use: the fast path of
quant/gguf_quantize.py, whose numpy quantizers are the twin. None where it cannot run."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from minerva.ops import native

SOURCE = Path(__file__).with_name("cpu_quantize.c")
BLOCK_BYTES = {10: 84, 11: 110, 12: 144, 13: 176, 14: 210}  # Q2_K .. Q6_K

_fn: list = []


def load() -> bool:
    lib = native.load(SOURCE)
    if lib is not None and not _fn:
        fn = lib.minerva_quantize_k
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        fn.restype = ctypes.c_int
        _fn.append(fn)
    return lib is not None


def quantize_k(blocks: np.ndarray, ggml_type: int) -> np.ndarray | None:
    """float32 [n, 256] -> uint8 [n, block_bytes] in `ggml_type` (Q2_K..Q6_K); None if the C
    quantizer is unavailable or does not do this type."""
    nbytes = BLOCK_BYTES.get(int(ggml_type))
    if nbytes is None or not load():
        return None
    blocks = np.ascontiguousarray(blocks, dtype=np.float32)
    out = np.empty((blocks.shape[0], nbytes), dtype=np.uint8)
    rc = _fn[0](
        int(ggml_type),
        blocks.ctypes.data,
        out.ctypes.data,
        blocks.shape[0],
        torch.get_num_threads(),
    )
    return None if rc else out
