"""A GGUF file as a ModelSource (not supported yet: issue 12)."""

from __future__ import annotations

from pathlib import Path

from minerva.errors import ModelLoadError
from minerva.loader.source import ModelSource


def open_gguf(path: Path, tokenizer_path: Path | None = None) -> ModelSource:
    raise ModelLoadError(
        f"{path} is a GGUF file, which this version cannot load yet; pass a Hugging Face model "
        "folder (config.json + *.safetensors)"
    )
