"""Safetensors files: header validation and tensor-by-tensor streaming from a memory map.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [start, end]}`` (offsets into the data section), and
the raw data. Reading only the header lets discovery catch truncated or mismatched shards before
any weights are loaded or device memory is allocated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from minerva.errors import ModelLoadError

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the JSON header
_REDOWNLOAD = "the file is damaged or the download was interrupted: download it again"


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The header of ``path`` (tensor name → dtype/shape/data_offsets), in data order.

    Raises ModelLoadError naming the file if the header is malformed or the file is shorter
    than the header says (a truncated download).
    """
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if header_len < 0 or header_len > min(file_size - 8, _MAX_HEADER_BYTES):
                raise ModelLoadError(
                    f"{path} is not a valid safetensors file (bad header length, file is "
                    f"{file_size} bytes); {_REDOWNLOAD}"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}; check the file and its permissions") from e
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        header.pop("__metadata__", None)
        data_end = max((_data_offsets(info)[1] for info in header.values()), default=0)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(
            f"{path} is not a valid safetensors file (unreadable header: {e}); {_REDOWNLOAD}"
        ) from e
    expected_size = 8 + header_len + data_end
    if expected_size != file_size:
        problem = "is truncated" if expected_size > file_size else "has trailing bytes"
        raise ModelLoadError(
            f"{path} {problem}: its header describes {expected_size} bytes but the file has "
            f"{file_size}; {_REDOWNLOAD}"
        )
    return dict(sorted(header.items(), key=lambda item: _data_offsets(item[1])[0]))


def _data_offsets(info: dict[str, Any]) -> tuple[int, int]:
    start, end = info["data_offsets"]
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
        raise ValueError(f"bad data_offsets {info['data_offsets']!r}")
    return start, end


def tensor_nbytes(info: dict[str, Any]) -> int:
    """Bytes a header entry occupies in the file."""
    start, end = _data_offsets(info)
    return end - start


def iter_safetensors_file(path: Path, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names`` from ``path`` one at a time, as stored, on CPU.

    The file is memory-mapped; each tensor is read only when its turn comes, so the caller
    decides how many are alive at once.
    """
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in names:
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise ModelLoadError(f"cannot read {path}: {e}; {_REDOWNLOAD}") from e
