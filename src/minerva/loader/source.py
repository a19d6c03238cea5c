"""A model to load, whatever its packaging: ``open_model(path)`` returns a ModelSource that gives
the config, generation defaults, tokenizer, chat template and a weight iterator, from an HF
folder (safetensors or .bin) or a GGUF file, so the engine never looks at files itself."""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from minerva.errors import ModelLoadError
from minerva.loader.gguf_file import GGUF_MAGIC
from minerva.loader.hf_config import GenerationDefaults, HFModelConfig

if TYPE_CHECKING:
    import torch

    from minerva.quant.gguf_types import QuantizedTensor
    from minerva.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SourceFormat = Literal["safetensors", "pytorch", "gguf"]
SUPPORTED_SOURCES = (
    "a Hugging Face model folder (config.json + *.safetensors or pytorch_model*.bin) "
    "or a .gguf file (or demo, the bundled demo model)"
)
_HASH_CHUNK = 1 << 22


class ModelSource(ABC):
    """One model's config, defaults, tokenizer and weights, read from disk on demand."""

    def __init__(
        self,
        path: Path,
        format: SourceFormat,
        config: HFModelConfig,
        generation: GenerationDefaults,
        tokenizer_path: Path | None = None,
        quantization: str | None = None,
    ) -> None:
        self.path = path
        self.format: SourceFormat = format
        self.config = config
        self.generation = generation
        """The author's generation_config.json (or its GGUF equivalent), fields None when unset."""
        self.tokenizer_path = tokenizer_path
        self.quantization = quantization
        """None for dense weights, else the file's scheme (e.g. ``"Q4_K_M"``)."""
        self._digest: str | None = None

    # --- tokenizer ------------------------------------------------------------------------------

    @cached_property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer (``tokenizer_path`` wins over the model's own); None, with a warning,
        when the model has none: only token-id prompts work then."""
        if self.tokenizer_path is not None:
            from minerva.tokenizer import Tokenizer  # noqa: PLC0415 - only when asked for

            return Tokenizer.from_folder(self.tokenizer_path)
        tokenizer = self._own_tokenizer()
        if tokenizer is None:
            logger.warning(
                "%s has no tokenizer: only token-id prompts will work (pass --tokenizer with a "
                "Hugging Face tokenizer folder for text)",
                self.path,
            )
        return tokenizer

    @abstractmethod
    def _own_tokenizer(self) -> Tokenizer | None:
        """The tokenizer the model itself carries, or None."""

    @property
    def chat_template(self) -> str | dict[str, str] | None:
        tokenizer = self.tokenizer
        return tokenizer.chat_template if tokenizer is not None else self._own_chat_template()

    def _own_chat_template(self) -> str | dict[str, str] | None:
        """The chat template the model carries outside a tokenizer (GGUF metadata)."""
        return None

    # --- generation defaults --------------------------------------------------------------------

    @property
    def generation_defaults(self) -> dict[str, Any]:
        """Sampling defaults for requests that set none: only the keys the author set."""
        gen = self.generation
        values = {
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "top_k": gen.top_k,
            "repetition_penalty": gen.repetition_penalty,
        }
        if gen.do_sample is False:
            values["temperature"] = 0.0
        return {k: v for k, v in values.items() if v is not None}

    @property
    def eos_token_ids(self) -> list[int]:
        """Stop ids: the generation config's, else the model config's, plus the tokenizer's EOS."""
        eos = list(self.generation.eos_token_id or []) or list(self.config.eos_token_id or [])
        tokenizer = self.tokenizer
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            if tokenizer.eos_token_id not in eos:
                eos.append(tokenizer.eos_token_id)
        return eos

    # --- files and weights ----------------------------------------------------------------------

    @property
    @abstractmethod
    def files(self) -> list[Path]:
        """Every file whose bytes make up the model (what ``digest`` hashes), in a fixed order."""

    @property
    def tensor_types(self) -> dict[str, int] | None:
        """Weight name -> GGML type id of a per-tensor quantized file (GGUF); None for others."""
        return None

    @property
    def num_bytes(self) -> int:
        """Size on disk of every file in ``files``."""
        return sum(p.stat().st_size for p in self.files)

    def digest(self) -> str:
        """``sha256:<hex>`` of the files' bytes in order (for one file: its ``sha256sum``);
        computed on first call, which reads every byte, then cached."""
        if self._digest is None:
            h = hashlib.sha256()
            for path in self.files:
                with path.open("rb") as f:
                    while chunk := f.read(_HASH_CHUNK):
                        h.update(chunk)
            self._digest = "sha256:" + h.hexdigest()
        return self._digest

    @abstractmethod
    def iter_weights(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        progress: bool = True,
        names_filter: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
        """Yield ``(hf_name, tensor)`` once per weight: float tensors cast to ``dtype`` on
        ``device``, quantized ones as a QuantizedTensor in their file encoding. Only names
        `names_filter` accepts are read (asked when the iteration reaches them or their file)."""

    def __repr__(self) -> str:
        quant = f", quantization={self.quantization!r}" if self.quantization else ""
        return f"{type(self).__name__}({str(self.path)!r}, format={self.format!r}{quant})"


def open_model(path: str | Path, tokenizer_path: str | Path | None = None) -> ModelSource:
    """Open an HF model folder or a GGUF file; anything else is a ModelLoadError saying what was
    found and what is supported. Reads only config and headers: weights stream later."""
    p = Path(os.path.expanduser(str(path)))
    tok = Path(os.path.expanduser(str(tokenizer_path))) if tokenizer_path else None
    if p.is_dir():
        from minerva.loader.hf_folder import open_hf_folder  # noqa: PLC0415

        return open_hf_folder(p, tok)
    if p.is_file() and _is_gguf(p):
        from minerva.loader.gguf import open_gguf  # noqa: PLC0415 - loaded for GGUF files only

        return open_gguf(p, tok)
    raise ModelLoadError(_not_a_model_message(p))


def _is_gguf(path: Path) -> bool:
    """A ``.gguf`` name or the GGUF magic; a misnamed ``.gguf`` fails later with its header."""
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _not_a_model_message(path: Path) -> str:
    if not path.exists():
        return f"model path {str(path)!r} does not exist: pass --model with {SUPPORTED_SOURCES}"
    kind = "a file" if path.is_file() else "not a file or folder"
    hint = ""
    if path.name == "config.json" or path.suffix in (".safetensors", ".bin", ".json"):
        hint = f"; pass its folder {str(path.parent)!r} instead"
    return (
        f"model path {str(path)!r} is {kind} ({path.suffix or 'no extension'}, no GGUF header), "
        f"not a model: pass --model with {SUPPORTED_SOURCES}{hint}"
    )
