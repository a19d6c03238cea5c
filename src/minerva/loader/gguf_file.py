"""Read a GGUF file's header (metadata and tensor table) with every count, length and offset
checked against the file size before anything is allocated, so a truncated or crafted file is
a ModelLoadError naming the file, never a crash, a hang or a giant allocation.

Tensor data is not read here: ``GGUFFile.tensors`` holds where each tensor lies in the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minerva.errors import ModelLoadError
from minerva.quant.gguf_types import BLOCK_GEOMETRY, GGMLType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 2
MAX_ARRAY_LENGTH = 1 << 24
"""Sixteen million elements: 60x the largest vocabulary; longer arrays are corrupt counts."""
_FIX = "re-download the file (it is probably truncated or corrupt) or convert the model again"

# GGUF value type id -> (struct format, size); 8 = string and 9 = array are read apart.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]
    """PyTorch order (rows first): GGUF stores dims innermost first, this is them reversed."""
    offset: int
    """Absolute byte offset of the data in the file."""
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    """Key -> value: ints, floats, bools, str, or lists of those (strings decoded losslessly)."""
    tensors: dict[str, GGUFTensorInfo] = field(default_factory=dict)
    file_size: int = 0


class _Cursor:
    """Little-endian reads from a buffer, each checked against the bytes left."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path} is not a valid GGUF file: {what}; {_FIX}")

    def need(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.pos + nbytes > self.size:
            raise self.fail(
                f"{what} needs {nbytes} bytes at offset {self.pos}, but the file has "
                f"{self.size} bytes"
            )

    def scalar(self, fmt: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def string(self, what: str) -> str:
        length = self.u64(f"the length of {what}")
        self.need(length, f"{what} ({length} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, type_id: int, what: str, depth: int = 0) -> Any:
        if type_id == _FLOAT32:
            # The shortest decimal that reads back as this float32: 1e-06, not 9.99999997e-07.
            return float(str(np.float32(self.scalar("f", 4, what))))
        if type_id in _SCALARS:
            return self.scalar(*_SCALARS[type_id], what)
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY and depth < MAX_ARRAY_NESTING:
            return self.array(what, depth)
        raise self.fail(f"{what} has unknown value type {type_id}")

    def array(self, what: str, depth: int) -> list[Any]:
        elem_type = self.u32(f"the element type of {what}")
        count = self.u64(f"the length of {what}")
        min_size = _SCALARS[elem_type][1] if elem_type in _SCALARS else 8
        if elem_type not in _SCALARS and elem_type not in (_STRING, _ARRAY):
            raise self.fail(f"{what} has unknown element type {elem_type}")
        if count > MAX_ARRAY_LENGTH:
            raise self.fail(f"{what} claims {count} elements (at most {MAX_ARRAY_LENGTH})")
        self.need(count * min_size, f"{what} ({count} elements)")
        if elem_type in _SCALARS:
            fmt, size = _SCALARS[elem_type]
            values = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
            self.pos += count * size
            return values
        if elem_type == _STRING:
            return self.strings(count, what)
        return [self.value(elem_type, f"{what}[{i}]", depth + 1) for i in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings: the vocabulary's hot loop (~10^5 tokens and merges), inlined."""
        buf, pos, size, out = self.buf, self.pos, self.size, []
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"the length of {what}[{i}]")
            (length,) = _U64.unpack_from(buf, pos)
            pos += 8
            if pos + length > size:
                self.pos = pos
                self.need(length, f"{what}[{i}] ({length} bytes)")
            out.append(str(buf[pos : pos + length], "utf-8", "surrogateescape"))
            pos += length
        self.pos = pos
        return out


def read_gguf(path: Path) -> GGUFFile:
    """Parse and validate the header of one GGUF file (one shard of a split model)."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            if size < 24:
                raise ModelLoadError(
                    f"{path} is not a valid GGUF file: only {size} bytes (a GGUF header alone "
                    f"is 24); {_FIX}"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                buf = memoryview(mm)
                try:
                    return _parse(_Cursor(buf, path), size)
                finally:
                    buf.release()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}; check the file and its permissions") from e


def _parse(cur: _Cursor, size: int) -> GGUFFile:
    magic = bytes(cur.buf[:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"it starts with {magic!r}, not the GGUF magic {GGUF_MAGIC!r}")
    cur.pos = 4
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            raise ModelLoadError(
                f"{cur.path} is a big-endian GGUF file; Minerva reads little-endian GGUF: "
                "convert the model again without --bigendian"
            )
        raise ModelLoadError(
            f"{cur.path} is GGUF version {version}; Minerva reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}: convert the model again with a "
            "current llama.cpp"
        )
    num_tensors = cur.u64("the tensor count")
    num_kv = cur.u64("the metadata count")
    # Each metadata entry takes at least 13 bytes and each tensor entry 24: counts beyond what
    # the file can hold are corrupt, caught before any loop runs.
    if num_kv * 13 + num_tensors * 24 > size - cur.pos:
        raise cur.fail(
            f"the header claims {num_kv} metadata entries and {num_tensors} tensors, more "
            f"than its {size} bytes can hold"
        )
    metadata = _read_metadata(cur, num_kv)
    alignment = _alignment(cur, metadata)
    infos = [_read_tensor_info(cur, i) for i in range(num_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, GGUFTensorInfo] = {}
    for name, type_id, shape, rel_offset in infos:
        if name in tensors:
            raise cur.fail(f"tensor {name!r} appears twice")
        tensors[name] = _place_tensor(cur, name, type_id, shape, rel_offset, data_start, alignment)
    return GGUFFile(cur.path, version, metadata, tensors, size)


def _read_metadata(cur: _Cursor, num_kv: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(num_kv):
        key = cur.string(f"metadata key #{i}")
        type_id = cur.u32(f"the type of metadata {key!r}")
        if key in metadata:
            raise cur.fail(f"metadata key {key!r} appears twice")
        metadata[key] = cur.value(type_id, f"metadata {key!r}")
    return metadata


def _alignment(cur: _Cursor, metadata: dict[str, Any]) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise cur.fail(f"general.alignment={value!r} is not a power of two")
    return value


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, int, tuple[int, ...], int]:
    name = cur.string(f"the name of tensor #{index}")
    num_dims = cur.u32(f"the dimension count of tensor {name!r}")
    if not 1 <= num_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {name!r} has {num_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
    dims = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(num_dims)]
    type_id = cur.u32(f"the type of tensor {name!r}")
    offset = cur.u64(f"the offset of tensor {name!r}")
    if any(d == 0 for d in dims):
        raise cur.fail(f"tensor {name!r} has an empty dimension {dims}")
    return name, type_id, tuple(reversed(dims)), offset


def _place_tensor(
    cur: _Cursor,
    name: str,
    type_id: int,
    shape: tuple[int, ...],
    rel_offset: int,
    data_start: int,
    alignment: int,
) -> GGUFTensorInfo:
    block, block_bytes = _geometry(type_id)
    if block is None:  # a type this build cannot size: load_gguf names it as unsupported
        return GGUFTensorInfo(name, type_id, shape, data_start + rel_offset, 0)
    if shape[-1] % block:
        raise cur.fail(
            f"tensor {name!r} has rows of {shape[-1]} values, not a multiple of its type's "
            f"block of {block}"
        )
    numel = 1
    for dim in shape:
        numel *= dim
    nbytes = numel // block * block_bytes
    start = data_start + rel_offset
    if rel_offset % alignment:
        raise cur.fail(f"tensor {name!r} starts at offset {rel_offset}, not {alignment}-aligned")
    if start + nbytes > cur.size:
        raise cur.fail(
            f"tensor {name!r} ({nbytes} bytes at offset {start}) runs past the end of the "
            f"file ({cur.size} bytes)"
        )
    return GGUFTensorInfo(name, type_id, shape, start, nbytes)


def _geometry(type_id: int) -> tuple[int | None, int]:
    """(values per block, bytes per block); None for types Minerva cannot size."""
    try:
        return BLOCK_GEOMETRY[GGMLType(type_id)]
    except (ValueError, KeyError):
        return None, 0
