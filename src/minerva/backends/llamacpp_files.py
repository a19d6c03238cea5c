"""The GGUF file the llamacpp backend opens: the configured file as it is, or a Hugging Face
folder converted once (F16, then llama.cpp's own quantizer for ``quantization``) into a cache,
so that ``--backend llamacpp`` runs the same weights as the other engines without a manual step.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from minerva.config import EngineConfig
from minerva.errors import ConfigError, ModelLoadError
from minerva.loader import open_model
from minerva.quant_names import OWN_FORMATS

logger = logging.getLogger(__name__)

CACHE_ENV = "MINERVA_CACHE_DIR"
FORMAT_VERSION = "1"
"""Bumped when the conversion changes: older cached files are then rebuilt."""


def cache_dir() -> Path:
    """$MINERVA_CACHE_DIR/gguf, else ~/.cache/minerva/gguf."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "minerva"
    return base / "gguf"


def gguf_for(model: Path, quantization: str | None, config: EngineConfig) -> Path:
    """``model`` itself when it is a GGUF file; a folder's cached conversion otherwise."""
    if quantization in OWN_FORMATS:
        raise ConfigError(
            f"quantization={quantization} is Minerva's own engine's format (CUDA); llama.cpp "
            "runs GGUF types: choose q8_0 (or another GGUF type) for the llamacpp backend"
        )
    source = open_model(model, config.model.tokenizer)  # headers only: cheap
    if source.format == "gguf":
        if quantization is not None and (source.quantization or "").lower() != quantization:
            raise ConfigError(
                f"{model} is a GGUF file stored as {source.quantization or 'float'}; the "
                f"llamacpp backend runs it as it is: drop quantization={quantization}"
            )
        return model
    key = _folder_key(source.files, quantization)
    target = cache_dir() / f"{model.name}-{quantization or 'f16'}-{key}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if quantization is not None:  # from the cached F16 conversion, made first if need be
        _quantize(gguf_for(model, None, config), target, quantization)
        return target
    logger.warning("llamacpp: converting %s to %s (once; cached)", model, target)
    _write_f16(source, model, target)
    return target


def _folder_key(files: list[Path], quantization: str | None) -> str:
    """Names, sizes and times of the folder's files: a changed checkpoint converts again."""
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for path in files:
        stat = path.stat()
        h.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    h.update(str(quantization).encode())
    return h.hexdigest()[:16]


def _write_f16(source, folder: Path, out: Path) -> None:
    """Every 2-D weight as F16 (1-D as F32, as llama.cpp keeps them), through a temp name."""
    import torch  # noqa: PLC0415 - only for a conversion

    from minerva.loader.gguf_export import float_plan, write_gguf  # noqa: PLC0415
    from minerva.quant.gguf_types import GGMLType  # noqa: PLC0415

    tmp = out.with_name(out.name + f".{os.getpid()}.part")
    tensors = source.iter_weights("cpu", torch.float32, progress=False)
    try:
        write_gguf(
            source.config, tensors, tmp, float_plan(GGMLType.F16),
            tokenizer_dir=source.tokenizer_path or folder, file_type="f16",
            name=folder.name, generation=source.generation,
        )  # fmt: skip
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)


def _quantize(f16: Path, out: Path, quantization: str) -> None:
    """llama.cpp's quantizer, so its own kernels read blocks it wrote."""
    import llama_cpp  # noqa: PLC0415 - the backend's package

    from minerva.loader.gguf_export import llama_file_type  # noqa: PLC0415

    ftype = llama_file_type(quantization)
    if ftype is None:
        raise ConfigError(
            f"quantization={quantization} has no llama.cpp file type: use q8_0, q4_0, q4_k_m, "
            "q5_k_m or q6_k with the llamacpp backend"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    tmp = out.with_name(out.name + f".{os.getpid()}.part")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"llama.cpp could not quantize {f16} to {quantization}")
    tmp.replace(out)
