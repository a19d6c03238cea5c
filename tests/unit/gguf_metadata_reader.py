"""A fast reader of a GGUF file's metadata for the vocabulary tests (the ``gguf`` package's
GGUFReader indexes every array element and takes seconds per vocabulary file)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        self.pos += n
        return self.data[self.pos - n : self.pos].decode("utf-8", errors="surrogateescape")

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id != _ARRAY:
            return self.take(_SCALARS[type_id])
        item_type, n = self.take("<I"), self.take("<Q")
        if item_type in _SCALARS and item_type != 7:
            dtype = np.dtype(_SCALARS[item_type])
            values = np.frombuffer(self.data, dtype, n, self.pos)
            self.pos += n * dtype.itemsize
            return values.tolist()
        return [self.value(item_type) for _ in range(n)]


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """Key -> decoded value for every metadata entry of a (trusted) GGUF file."""
    r = _Reader(Path(path).read_bytes())
    if r.data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    r.pos = 8
    _num_tensors, num_kv = r.take("<Q"), r.take("<Q")
    fields = {}
    for _ in range(num_kv):
        key = r.string()
        fields[key] = r.value(r.take("<I"))
    return fields
