"""``pytorch_model*.bin`` files, loaded only through ``torch.load(weights_only=True)``.

A .bin file is a pickle; a pickle may run arbitrary code when loaded. ``weights_only`` allows only
tensors and plain containers, so a file holding anything else is refused, never executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from minerva.errors import ModelLoadError


def load_bin_state_dict(path: Path) -> dict[str, Any]:
    """The state dict in ``path``, memory-mapped where the file format allows it."""
    try:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # The legacy (pre-zip) torch.save format cannot be memory-mapped.
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():
            raise ModelLoadError(
                f"{path} contains arbitrary Python objects, not just tensors, and will not be "
                "loaded (unpickling it could run code); convert the checkpoint to safetensors "
                "in an environment you trust, or use a safetensors version of the model"
            ) from e
        raise _corrupt(path, e) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise _corrupt(path, e) from e
    if not isinstance(state_dict, dict):
        raise ModelLoadError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors; "
            "save the model with save_pretrained() or convert it to safetensors"
        )
    return state_dict


def _corrupt(path: Path, error: Exception) -> ModelLoadError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelLoadError(
        f"cannot read {path}: not a readable PyTorch checkpoint ({reason}); "
        "the file is damaged or the download was interrupted: download it again"
    )


def iter_bin_file(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` from ``path``, dropping each from the state dict once yielded."""
    state_dict = load_bin_state_dict(path)
    for name in list(state_dict):
        value = state_dict.pop(name)
        if isinstance(value, torch.Tensor):  # skip stray metadata (ints, strings)
            yield name, value
