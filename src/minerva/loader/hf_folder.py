"""A Hugging Face model folder as a ModelSource: config.json, generation_config.json,
tokenizer.json and safetensors or .bin weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import torch

from minerva.errors import ModelLoadError
from minerva.loader.checkpoint import (
    CheckpointFiles,
    find_checkpoint_files,
    iter_checkpoint_tensors,
)
from minerva.loader.hf_config import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    load_generation_config,
    load_model_config,
)
from minerva.loader.source import ModelSource
from minerva.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


class HFFolderSource(ModelSource):
    """The weight files are looked up on first use, so a config-only folder serves dummy loads."""

    def __init__(self, folder: Path, tokenizer_path: Path | None = None) -> None:
        _check_not_gguf_folder(folder)
        super().__init__(
            path=folder,
            format=_weight_format(folder),
            config=load_model_config(folder),
            generation=load_generation_config(folder),
            tokenizer_path=tokenizer_path,
        )

    @cached_property
    def checkpoint(self) -> CheckpointFiles:
        return find_checkpoint_files(self.path)

    @property
    def files(self) -> list[Path]:
        configs = [self.path / name for name in (CONFIG_FILE, GENERATION_CONFIG_FILE)]
        return [p for p in configs if p.is_file()] + list(self.checkpoint.files)

    def _own_tokenizer(self) -> Tokenizer | None:
        if not (self.path / TOKENIZER_FILE).is_file():
            return None
        return Tokenizer.from_folder(self.path)

    def iter_weights(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        progress: bool = True,
        names_filter: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return iter_checkpoint_tensors(
            self.checkpoint, device=device, dtype=dtype, progress=progress,
            names_filter=names_filter,
        )  # fmt: skip


def open_hf_folder(folder: Path, tokenizer_path: Path | None = None) -> HFFolderSource:
    return HFFolderSource(folder, tokenizer_path)


def _weight_format(folder: Path):
    """ "safetensors" unless the folder holds only PyTorch .bin weights (cheap: names only)."""
    has_bin = any(folder.glob("pytorch_model*.bin"))
    return "pytorch" if has_bin and not any(folder.glob("*.safetensors")) else "safetensors"


def _check_not_gguf_folder(folder: Path) -> None:
    """A folder with .gguf files but no config.json: point at the file instead."""
    if (folder / CONFIG_FILE).is_file():
        return
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if ggufs:
        raise ModelLoadError(
            f"{folder} has no {CONFIG_FILE} but holds GGUF file(s) {', '.join(ggufs[:3])}: "
            f"pass the .gguf file itself, e.g. --model {folder / ggufs[0]}"
        )
