"""Which weight files a model folder may name: regular files inside the folder. A FIFO or a
device named ``model.safetensors`` would block or never end the read; an index naming
``../x``, ``/etc/...`` or a symlink out of the folder would read files the folder does not own.

Hugging Face's cache keeps a snapshot's files as symlinks into the repository's ``blobs/``: a
folder inside ``snapshots/`` may point into its repository (the snapshot's grandparent)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from minerva.errors import ModelLoadError


def _allowed_root(folder: Path) -> Path:
    root = folder.resolve()
    if root.parent.name == "snapshots":  # hub cache: models--org--name/snapshots/<rev>
        return root.parent.parent
    return root


def check_shard_name(name: object, index_file: Path) -> str:
    """``name`` from an index's weight_map, refused unless it is a plain relative file name."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ModelLoadError(
            f"{index_file} maps a tensor to {name!r}, which is not a file name; the index is "
            "corrupt: download the model folder again"
        )
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in posix.parts
        or (".." in windows.parts)
    ):
        raise ModelLoadError(
            f"{index_file} names the shard {name!r}, which points outside the model folder; "
            "refused (a model's index may only name files in its folder): fix or re-download "
            "the index"
        )
    return name


def check_weight_file(path: Path, folder: Path) -> Path:
    """``path`` if it is a regular file that stays inside ``folder`` once symlinks are followed;
    else a ModelLoadError naming it (checked without opening it: a FIFO's open blocks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ModelLoadError(f"cannot read weight file {path}: {e}") from None
    if not stat.S_ISREG(mode):
        raise ModelLoadError(
            f"{path} is not a regular file (a FIFO, device, socket or folder); refused: "
            "replace it with the real weight file"
        )
    root = _allowed_root(folder)
    if not path.resolve().is_relative_to(root):
        raise ModelLoadError(
            f"{path} is a symlink to {path.resolve()}, outside the model folder {root}; refused: "
            "copy the file into the folder (or link the whole folder instead)"
        )
    return path
