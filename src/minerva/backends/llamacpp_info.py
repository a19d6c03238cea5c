"""What the llamacpp backend reports about itself: the loaded file's ModelInfo and, for
``minerva doctor``, what llama.cpp can do on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minerva.backends.base import ModelInfo
from minerva.backends.llamacpp_options import HONOURED_NOTE, UNSUPPORTED_NOTE, Placement
from minerva.loader import ModelSource


def doctor() -> dict[str, str]:
    """What llama.cpp can do here (minerva doctor)."""
    import llama_cpp  # noqa: PLC0415

    return {
        "version": llama_cpp.__version__,
        "gpu offload": "yes" if llama_cpp.llama_supports_gpu_offload() else "no (CPU build)",
        "build": llama_cpp.llama_print_system_info().decode(errors="replace").strip(" |"),
        "concurrency": "a pool of llamacpp_contexts contexts, one request each; more queue",
        "sampling": HONOURED_NOTE,
        "not supported": UNSUPPORTED_NOTE,
    }


def describe_model(model: Path, source: ModelSource, llm: Any, where: Placement) -> ModelInfo:
    """The facts of the loaded file; the digest is left for later."""
    hf = source.config
    architectures = getattr(hf, "architectures", None) or ["unknown"]
    name = model.name if model.is_dir() else model.stem
    return ModelInfo(
        name=name,
        source=str(model),
        format="gguf",
        quantization=source.quantization or _file_type(llm),
        dtype="float32",  # llama.cpp's activations on CPU; weights stay in the file's types
        parameter_count=int(llm._model.n_params()),
        weight_bytes=int(llm._model.size()),
        digest="",
        context_length=llm.n_ctx(),
        vocab_size=int(llm.n_vocab()),
        architecture=architectures[0],
        family=getattr(hf, "model_type", None) or "llama",
        device=where.device,
        modified_at=source.path.stat().st_mtime,
        hidden_size=hf.hidden_size,
        num_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
    )


def _file_type(llm: Any) -> str:
    """A float file's type as llama.cpp names it (F16, BF16, F32)."""
    import gguf  # noqa: PLC0415

    ftype = llm.metadata.get("general.file_type")
    try:
        return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        return "unknown"
