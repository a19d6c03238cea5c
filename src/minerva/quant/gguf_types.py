"""GGML tensor types: ids, block geometry, and a quantized tensor as the loader hands it over.

No torch and no `gguf` import here: the ids and sizes are the file format's (llama.cpp's
`ggml.h` / gguf-py's `GGMLQuantizationType`), so the loader, the quantizer and the kernels can
share them without an optional dependency.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class GGMLType(enum.IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ4_NL = 20
    IQ4_XS = 23
    BF16 = 30


# type -> (elements per block, bytes per block)
BLOCK_GEOMETRY: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.BF16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),  # ggml's block_q8_1 (fp16 d, fp16 s); gguf-py's table says 40
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ4_NL: (32, 18),  # fp16 d, 16 bytes of 4-bit indices into IQ4_CODEBOOK
    GGMLType.IQ4_XS: (256, 136),  # fp16 d, 8 six-bit sub-block scales (2 + 4 bytes), 128 B
}

IQ4_CODEBOOK = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
"""The 16 values a 4-bit index of IQ4_NL / IQ4_XS stands for (ggml's kvalues_iq4nl): denser
near zero, where most weights are, than the evenly spaced codes of Q4_0."""

FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})
"""Types that are plain floating-point arrays (loaded as dense weights)."""

SUPPORTED_WEIGHT_TYPES = frozenset(BLOCK_GEOMETRY) - {GGMLType.Q8_K}
"""Types a model file may store weights in (Q8_K exists only as an activation format)."""


def type_name(type_id: int) -> str:
    try:
        return GGMLType(type_id).name
    except ValueError:
        return f"type {type_id}"


def row_bytes(ggml_type: GGMLType, num_elements: int) -> int:
    """Bytes of one row of `num_elements` values (a multiple of the block size)."""
    block, size = BLOCK_GEOMETRY[ggml_type]
    if num_elements % block:
        raise ValueError(
            f"{ggml_type.name} rows hold multiples of {block} values, not {num_elements}"
        )
    return num_elements // block * size


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight kept in its file encoding: `data` is uint8 [rows, row_bytes] (a torch tensor or a
    numpy array), `shape` the logical (rows, columns) as in PyTorch (out_features, in_features)."""

    data: Any
    ggml_type: GGMLType
    shape: tuple[int, ...]
    # drops `data`'s pages from this process's memory once they are copied (a file mapping
    # reads them back if touched again); None where data is not a file mapping
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes) if hasattr(self.data, "nbytes") else self.data.numel()


class LazyQuantizedTensor(QuantizedTensor):
    """A QuantizedTensor whose `data` is computed on first access by `make()` (llama.cpp's
    permuted q/k rows, un-permuted by a copy): a consumer that never reads it (a weight cache
    hit, quant/x8_cache.py) never pays for the copy. `nbytes` is known without it."""

    def __init__(self, make: Callable[[], Any], nbytes: int, ggml_type, shape, release=None):
        object.__setattr__(self, "_make", make)
        object.__setattr__(self, "_nbytes", nbytes)
        super().__init__(None, ggml_type, shape, release)

    @property  # type: ignore[override]
    def data(self) -> Any:
        if self._data is None:
            object.__setattr__(self, "_data", self._make())
        return self._data

    @data.setter
    def data(self, value: Any) -> None:  # the dataclass __init__ sets it (None: not yet made)
        object.__setattr__(self, "_data", value)

    @property
    def made(self) -> bool:
        """Whether `data` has been computed."""
        return self._data is not None

    @property
    def nbytes(self) -> int:
        return self._nbytes
