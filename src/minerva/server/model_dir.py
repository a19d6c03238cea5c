"""The models directory of ``minerva serve --models-dir DIR``: what it holds, by Ollama name.

Every entry directly under DIR is one model: a Hugging Face folder (config.json + weights), a
``.gguf`` file, or a folder holding one ``.gguf`` file. Its name is the entry's name (a file
without ``.gguf``) with Ollama's ``:latest`` tag unless the name carries a tag already
(``qwen:7b``). A symlink is a model too (``/api/copy`` makes one). No torch here: listing reads
only file sizes, times and config.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from minerva.server.api_errors import APIError

DEFAULT_TAG = "latest"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_GGUF_QUANT = re.compile(r"(?i)(?:^|[.\-_])((?:I?Q\d+_[A-Z0-9_]+|Q\d+_\d|F16|BF16|F32))$")
# checked with fullmatch: "$" also matches before a final newline ("a\n" made an entry)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(:[A-Za-z0-9][A-Za-z0-9._\-]*)?$")


@dataclass(frozen=True)
class LocalModel:
    """One model of the directory, as found on disk (before loading)."""

    name: str
    """Ollama name with tag: ``tiny:latest``."""
    path: Path
    """What the engine loads: the HF folder or the .gguf file."""
    entry: Path
    """The directory entry (the folder, the file or a symlink to either)."""
    format: str
    """"safetensors", "pytorch" or "gguf"."""
    size: int
    """Bytes of weight files on disk."""
    modified_at: float
    quantization: str
    """The file's quantization (Q4_K_M) or the checkpoint dtype (FLOAT32); "" when unknown."""
    family: str


def canonical_name(name: str) -> str:
    """``name`` with Ollama's default tag: ``tiny`` -> ``tiny:latest``."""
    return name if ":" in name else f"{name}:{DEFAULT_TAG}"


def check_name(name: str) -> str:
    """The canonical form of a name a client gives for a new model (copy, create), or 400."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".gguf"):
        raise APIError(
            400,
            f"invalid model name {name!r}: use letters, digits, '.', '-' and '_', with an "
            "optional ':tag'",
            param="model",
            code="invalid_model_name",
        )
    return canonical_name(name)


def entry_name(name: str) -> str:
    """The directory entry a canonical name is stored under (``:latest`` is left off)."""
    return name.removesuffix(f":{DEFAULT_TAG}")


def scan(models_dir: Path) -> dict[str, LocalModel]:
    """Every model under ``models_dir`` by canonical name (entries that are no model are
    skipped; the first of two entries with one name wins, in sorted order)."""
    found: dict[str, LocalModel] = {}
    for entry in sorted(models_dir.iterdir()) if models_dir.is_dir() else []:
        if entry.name.startswith("."):
            continue
        model = describe(entry)
        if model is not None:
            found.setdefault(model.name, model)
    return found


def describe(entry: Path) -> LocalModel | None:
    """The model at one directory entry, or None if it holds none."""
    stem = entry.name.removesuffix(".gguf") if entry.is_file() else entry.name
    if not stem or stem.count(":") > 1:
        return None
    name = canonical_name(stem)
    if entry.is_file() and entry.suffix == ".gguf":
        return _model(name, entry, entry, "gguf", [entry], _gguf_quant(entry), "")
    if not entry.is_dir():
        return None
    if (entry / "config.json").is_file():
        weights = sorted(p for p in entry.iterdir() if p.suffix in WEIGHT_SUFFIXES[:4])
        fmt = "safetensors" if any(p.suffix == ".safetensors" for p in weights) else "pytorch"
        config = _read_config(entry / "config.json")
        quant = _hf_quant(config)
        return _model(name, entry, entry, fmt, weights, quant, str(config.get("model_type", "")))
    ggufs = sorted(entry.glob("*.gguf"))
    if len(ggufs) == 1:
        return _model(name, ggufs[0], entry, "gguf", ggufs, _gguf_quant(ggufs[0]), "")
    return None


def _model(name, path, entry, fmt, files, quant, family) -> LocalModel:
    stats = [f.stat() for f in files if f.is_file()]
    stamp = max((s.st_mtime for s in stats), default=path.stat().st_mtime)
    size = sum(s.st_size for s in stats)
    return LocalModel(name, path, entry, fmt, size, stamp, quant, family)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _hf_quant(config: dict) -> str:
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method"):
        return str(quant["quant_method"]).upper()
    dtype = config.get("torch_dtype") or config.get("dtype")
    return str(dtype).upper() if dtype else ""


def _gguf_quant(path: Path) -> str:
    """The quantization named in a GGUF file name (``qwen.Q4_K_M.gguf``); "" if none."""
    match = _GGUF_QUANT.search(path.name.removesuffix(".gguf"))
    return match.group(1).upper() if match else ""
