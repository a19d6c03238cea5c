"""Find the weight files of an HF model folder and stream their tensors one by one.

Preference order: ``model.safetensors.index.json`` (sharded), ``model.safetensors``, any
``*.safetensors``, then ``pytorch_model.bin.index.json`` / ``pytorch_model*.bin``. Tensors are
yielded one at a time, cast and moved as they come, so host memory never holds the whole
state dict: peak memory is the target weights plus one tensor in flight.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from minerva.errors import ModelLoadError
from minerva.loader.hf_config import read_json
from minerva.loader.safetensors_loader import (
    iter_safetensors_file,
    read_safetensors_header,
    tensor_nbytes,
)
from minerva.loader.torch_bin_loader import iter_bin_file
from minerva.loader.weight_paths import check_shard_name, check_weight_file
from minerva.platform import parse_dtype

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
_ACCEPTED = (
    f"{SAFE_SINGLE}, sharded *.safetensors with {SAFE_INDEX}, any *.safetensors, "
    f"{BIN_SINGLE} or sharded pytorch_model-*.bin with {BIN_INDEX}"
)

NamesFilter = Callable[[str], bool] | Collection[str] | None


@dataclass
class CheckpointFiles:
    """The weight files of one model folder, validated."""

    folder: Path
    format: Literal["safetensors", "bin"]
    files: list[Path]
    """Weight files in load order."""
    index_file: Path | None = None
    weight_map: dict[str, Path] | None = None
    """Tensor name → file holding it. Always set for safetensors; for .bin only with an index."""
    total_bytes: int = 0
    """Size of all weight files (the progress bar's total)."""
    tensor_bytes: dict[str, int] = field(default_factory=dict, repr=False)


def find_checkpoint_files(folder: str | Path) -> CheckpointFiles:
    """Locate and validate the weights of ``folder``; raise ModelLoadError naming any problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {folder} does not exist; pass a local HF model folder")
    if (folder / SAFE_INDEX).is_file():
        return _safetensors_checkpoint(folder, _index_shards(folder / SAFE_INDEX))
    if (folder / SAFE_SINGLE).is_file():
        return _safetensors_checkpoint(folder, ({}, [_checked(folder / SAFE_SINGLE)]))
    safetensors = [_checked(p) for p in sorted(folder.glob("*.safetensors"))]
    # consolidated.safetensors is Mistral's own layout (other tensor names): skip it when HF
    # files sit next to it.
    hf_named = [p for p in safetensors if not p.name.startswith("consolidated")]
    if safetensors:
        return _safetensors_checkpoint(folder, ({}, hf_named or safetensors))
    if (folder / BIN_INDEX).is_file():
        index_map, shards = _index_shards(folder / BIN_INDEX)
        weight_map = {name: folder / shard for name, shard in index_map.items()}
        return _bin_checkpoint(folder, shards, folder / BIN_INDEX, weight_map)
    if (folder / BIN_SINGLE).is_file():
        return _bin_checkpoint(folder, [_checked(folder / BIN_SINGLE)])
    bins = [_checked(p) for p in sorted(folder.glob("pytorch_model*.bin"))]
    if bins:
        return _bin_checkpoint(folder, bins)
    raise ModelLoadError(f"no weight files found in {folder}; expected {_ACCEPTED}")


def _checked(path: Path) -> Path:
    return check_weight_file(path, path.parent)


def _index_shards(index_file: Path) -> tuple[dict[str, str], list[Path]]:
    """The index's ``weight_map`` (name → shard file name) and its shards, all checked to exist."""
    index = read_json(index_file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(
            f"{index_file} has no 'weight_map'; re-download it or remove it to load the "
            "shards without an index"
        )
    names = [check_shard_name(name, index_file) for name in dict.fromkeys(weight_map.values())]
    shards = [index_file.parent / name for name in names]
    for shard in shards:
        if not shard.exists():
            raise ModelLoadError(
                f"shard {shard.name} listed in {index_file} is missing from {index_file.parent}; "
                "download the missing shard (the download was probably interrupted)"
            )
    return weight_map, [check_weight_file(shard, index_file.parent) for shard in shards]


def _safetensors_checkpoint(
    folder: Path, index: tuple[dict[str, str], list[Path]]
) -> CheckpointFiles:
    index_map, files = index
    weight_map: dict[str, Path] = {}
    tensor_bytes: dict[str, int] = {}
    shard_names: dict[Path, set[str]] = {}
    for path in files:
        header = read_safetensors_header(path)
        shard_names[path] = set(header)
        for name, info in header.items():
            # With an index, only the shard the index names supplies a tensor; without one,
            # the first file does. Either way no tensor is loaded twice.
            owner = folder / index_map[name] if name in index_map else None
            if name not in weight_map and (owner is None or owner == path):
                weight_map[name] = path
                tensor_bytes[name] = tensor_nbytes(info)
    for name, shard in index_map.items():
        if name not in shard_names[folder / shard]:
            raise ModelLoadError(
                f"{folder / SAFE_INDEX} maps tensor {name!r} to {shard}, but that shard does not "
                "contain it; the shards and the index come from different downloads: download "
                "the model folder again"
            )
    return CheckpointFiles(
        folder=folder,
        format="safetensors",
        files=files,
        index_file=folder / SAFE_INDEX if index_map else None,
        weight_map=weight_map,
        total_bytes=sum(tensor_bytes.values()),
        tensor_bytes=tensor_bytes,
    )


def _bin_checkpoint(
    folder: Path,
    files: list[Path],
    index_file: Path | None = None,
    weight_map: dict[str, Path] | None = None,
) -> CheckpointFiles:
    return CheckpointFiles(
        folder=folder,
        format="bin",
        files=files,
        index_file=index_file,
        weight_map=weight_map,
        total_bytes=sum(p.stat().st_size for p in files),
    )


def iter_checkpoint_tensors(
    folder_or_files: str | Path | CheckpointFiles,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    names_filter: NamesFilter = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of a checkpoint, each exactly once.

    Each tensor is read from its memory-mapped file, cast to ``dtype`` (floating tensors only)
    and moved to ``device`` just before it is yielded; the loader keeps no reference to tensors
    already yielded, so a consumer that copies them into a model holds only one extra at a time.
    ``names_filter`` (a predicate or a collection of names) selects which tensors to read.
    """
    files = (
        folder_or_files
        if isinstance(folder_or_files, CheckpointFiles)
        else find_checkpoint_files(folder_or_files)
    )
    device = torch.device(device)
    dtype = parse_dtype(dtype)
    wanted = _make_filter(names_filter)
    raw = _iter_safetensors(files, wanted) if files.format == "safetensors" else _iter_bin(files)
    with progress_bar(progress, files.total_bytes) as advance:
        for name, tensor in raw:
            if not wanted(name):
                continue
            advance(tensor.nbytes)
            tensor = convert_tensor(tensor, device, dtype)
            yield name, tensor


def _iter_safetensors(files: CheckpointFiles, wanted: Callable[[str], bool]):
    assert files.weight_map is not None
    for path in files.files:
        names = [n for n, p in files.weight_map.items() if p == path and wanted(n)]
        if names:  # a shard holding nothing wanted is never opened
            yield from iter_safetensors_file(path, names)


def _iter_bin(files: CheckpointFiles):
    seen: set[str] = set()
    for path in files.files:
        for name, tensor in iter_bin_file(path):
            owner = files.weight_map.get(name) if files.weight_map else None
            if name in seen or (owner is not None and owner != path):
                continue
            seen.add(name)
            yield name, tensor
        if files.weight_map:
            missing = [n for n, p in files.weight_map.items() if p == path and n not in seen]
            if missing:
                raise ModelLoadError(
                    f"{files.index_file} maps tensor {missing[0]!r} to {path.name}, but that shard "
                    "does not contain it; the shards and the index come from different "
                    "downloads: download the model folder again"
                )


def convert_tensor(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None):
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        if device.type != "cpu":
            tensor = tensor.to(device)  # cast on the accelerator: far faster than on the host
        tensor = tensor.to(dtype)
    return tensor.to(device)


def _make_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    names = frozenset(names_filter)
    return names.__contains__


@contextlib.contextmanager
def progress_bar(
    enabled: bool, total_bytes: int, label: str = "Loading weights"
) -> Iterator[Callable[[int], None]]:
    """A transient `label` bar on stderr; a no-op when disabled or not a terminal."""
    stderr = sys.stderr
    if not (enabled and stderr is not None and stderr.isatty()):
        yield lambda nbytes: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stderr), transient=True) as bar:
        task = bar.add_task("load", total=total_bytes)
        yield lambda nbytes: bar.advance(task, nbytes)
