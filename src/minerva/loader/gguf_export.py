"""Write a model as a GGUF file that llama.cpp loads: its tensor names and metadata, the Q/K
rows permuted as its converter does, each weight in the type a plan picks (float or blocks).

The tokenizer goes in through the `gguf` package's own vocabulary readers (`gguf.vocab`), the
same ones llama.cpp's converter uses, so the file tokenizes as a converted one would.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from minerva.errors import ModelLoadError
from minerva.loader.gguf_names import GLOBAL_NAMES, LAYER_NAMES, PERMUTED_ARCHS, permute_rows
from minerva.loader.hf_config import GenerationDefaults
from minerva.quant.gguf_types import FLOAT_TYPES, GGMLType, QuantizedTensor

logger = logging.getLogger(__name__)

# HF model_type -> llama.cpp architecture (Mistral checkpoints convert as "llama").
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# The loader's GGUF -> HF name tables, inverted.
_GLOBAL_NAMES = {hf: gguf_name for gguf_name, hf in GLOBAL_NAMES.items()}
_LAYER_NAMES = {hf: gguf_name for gguf_name, hf in LAYER_NAMES.items()}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def llama_file_type(name: str) -> int | None:
    """llama.cpp's `general.file_type` id for a type or mix name (q4_k_m -> 15); None for
    names llama.cpp has no file type for (plain q4_k, q8_1 ...)."""
    key = "ALL_F32" if name.lower() == "f32" else "MOSTLY_" + name.upper()
    import gguf  # noqa: PLC0415 - optional dependency

    member = gguf.LlamaFileType.__members__.get(key)
    return None if member is None else int(member)


TypePlan = Callable[[str, tuple[int, ...]], GGMLType]
"""(gguf tensor name, logical shape) -> the type to store it in."""
Quantizer = Callable[[torch.Tensor, GGMLType], QuantizedTensor]


def gguf_tensor_name(hf_name: str) -> str | None:
    """HF checkpoint name -> llama.cpp tensor name (None: not stored, e.g. rotary buffers)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.match(hf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        return None
    return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def write_gguf(
    config,
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_path: str | Path,
    type_plan: TypePlan,
    quantize: Quantizer | None = None,
    tokenizer_dir: str | Path | None = None,
    file_type: str | None = None,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
    generation: GenerationDefaults | None = None,
) -> Path:
    """Write `tensors` (HF names, float) of a model with HF config `config` to `out_path`.

    `type_plan` picks each tensor's type (1-D tensors are always F32, as llama.cpp keeps them);
    `quantize` turns a float tensor into blocks of a quantized type. `progress` gets the count
    of tensors written so far. `generation` (generation_config.json) becomes the
    `general.sampling.*` keys, as llama.cpp's converter writes them."""
    import gguf  # noqa: PLC0415 - optional dependency

    arch = GGUF_ARCH.get(config.model_type)
    if arch is None:
        raise ModelLoadError(
            f"cannot write GGUF for model_type {config.model_type!r}: supported "
            f"{', '.join(GGUF_ARCH)}"
        )
    out_path = Path(out_path)
    writer = gguf.GGUFWriter(out_path, arch)
    _write_model_metadata(writer, config, arch, name or out_path.stem, file_type)
    if tokenizer_dir is not None:
        write_tokenizer_metadata(writer, Path(tokenizer_dir), config.vocab_size)
    if generation is not None:
        _write_sampling_defaults(writer, generation)
    permute = arch in PERMUTED_ARCHS
    count = 0
    for hf_name, tensor in tensors:
        gname = gguf_tensor_name(hf_name)
        if gname is None:
            continue
        if permute and gname.endswith(("attn_q.weight", "attn_q.bias")):
            tensor = permute_rows(tensor, config.num_attention_heads)
        elif permute and gname.endswith(("attn_k.weight", "attn_k.bias")):
            tensor = permute_rows(tensor, config.num_key_value_heads)
        ggml_type = GGMLType.F32 if tensor.dim() == 1 else type_plan(gname, tuple(tensor.shape))
        data, raw = _encode(tensor, ggml_type, quantize)
        writer.add_tensor(gname, data, raw_dtype=raw)
        count += 1
        if progress is not None:
            progress(count)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _encode(tensor: torch.Tensor, ggml_type: GGMLType, quantize: Quantizer | None):
    """A tensor in `ggml_type` as (numpy array, raw dtype for GGUFWriter)."""
    import gguf  # noqa: PLC0415

    tensor = tensor.detach().cpu()
    if ggml_type == GGMLType.F32:
        return tensor.float().numpy(), None
    if ggml_type == GGMLType.F16:
        return tensor.to(torch.float16).numpy(), None
    if ggml_type == GGMLType.BF16:
        raw = tensor.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
        return raw, gguf.GGMLQuantizationType.BF16
    if quantize is None:
        raise ValueError(f"{ggml_type.name} needs a quantizer")
    q = quantize(tensor.float(), ggml_type)
    data = q.data.numpy() if isinstance(q.data, torch.Tensor) else np.asarray(q.data)
    return data.astype(np.uint8, copy=False), gguf.GGMLQuantizationType(int(ggml_type))


def _write_model_metadata(writer, config, arch: str, name: str, file_type: str | None) -> None:
    import gguf  # noqa: PLC0415

    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if "original_max_position_embeddings" in scaling:
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind is not None and kind != "default":
        logger.warning("rope scaling %r is not written to GGUF: llama.cpp has no such key", kind)
    if config.sliding_window is not None and config.model_type == "mistral":
        writer.add_sliding_window(config.sliding_window)
    file_type_id = None if file_type is None else llama_file_type(file_type)
    if file_type_id is not None:
        writer.add_file_type(file_type_id)
    writer.add_quantization_version(2)


def _write_sampling_defaults(writer, gen: GenerationDefaults) -> None:
    temperature = 0.0 if gen.do_sample is False else gen.temperature
    for add, value in (
        (writer.add_sampling_temp, temperature),
        (writer.add_sampling_top_k, gen.top_k),
        (writer.add_sampling_top_p, gen.top_p),
        (writer.add_sampling_penalty_repeat, gen.repetition_penalty),
    ):
        if value is not None:
            add(value)


def write_tokenizer_metadata(writer, folder: Path, vocab_size: int) -> None:
    """The HF tokenizer in `folder` as GGUF `tokenizer.*` keys, through gguf.vocab's readers:
    SentencePiece (`tokenizer.model`) -> "llama", byte-level BPE (`tokenizer.json`) -> "gpt2"."""
    import gguf  # noqa: PLC0415

    vocab = _read_vocab(folder)
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    # Pad to the embedding's row count, as llama.cpp's converter does.
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(folder))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(
        folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)
    )
    special.add_to_gguf(writer, quiet=True)


def _read_vocab(folder: Path):
    import gguf.vocab as gv  # noqa: PLC0415

    if (folder / "tokenizer.model").exists():
        try:
            return gv.SentencePieceVocab(folder)
        except ImportError:
            logger.warning("sentencepiece is not installed: reading tokenizer.json instead")
    for reader in (gv.BpeVocab, gv.LlamaHfVocab):
        try:
            return reader(folder)
        except (FileNotFoundError, TypeError, ImportError):
            continue
    raise ModelLoadError(
        f"{folder} has no tokenizer GGUF can hold (tokenizer.model for SentencePiece, or a "
        "byte-level BPE tokenizer.json): pass a model folder with one of them"
    )


# Pre-tokenizer regexes of tokenizer.json -> llama.cpp's `tokenizer.ggml.pre` names.
_PRE_BY_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def _pre_tokenizer_name(folder: Path) -> str:
    """llama.cpp names a BPE pre-tokenizer by its regex; plain byte-level is GPT-2's."""
    try:
        pre = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["pre_tokenizer"]
    except (OSError, KeyError, ValueError):
        return "default"
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    for step in steps:
        if step.get("type") == "Split":
            regex = step.get("pattern", {}).get("Regex")
            if regex in _PRE_BY_REGEX:
                return _PRE_BY_REGEX[regex]
            logger.warning("unknown pre-tokenizer regex: llama.cpp will use its default")
            return "default"
    if any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
        return "gpt-2"
    return "default"


def float_plan(ggml_type: GGMLType) -> TypePlan:
    """Every 2-D weight in one float type."""
    if ggml_type not in FLOAT_TYPES:
        raise ValueError(f"{ggml_type.name} is not a float type")
    return lambda name, shape: ggml_type
