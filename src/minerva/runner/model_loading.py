"""What the worker checks before it builds anything: which model to open, whether its lengths
and its weights fit the limits and the memory budget; dummy weights for benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from minerva.config import EngineConfig
from minerva.errors import ConfigError
from minerva.loader import ModelSource, open_model
from minerva.loader.checkpoint import progress_bar
from minerva.models.options import ModelOptions
from minerva.models.registry import count_weight_bytes
from minerva.ops.kernels import KernelSet, torch_kernels
from minerva.quant.base import QuantConfig
from minerva.quant.gguf_quantize import QUANTIZER_VERSION
from minerva.quant.registry import build_insitu_config, build_quant_config
from minerva.quant.x8_cache import WeightCache
from minerva.quant_names import OWN_FORMATS, canonical_quantization
from minerva.runner.kv_cache import budget_words, memory_budget

logger = logging.getLogger(__name__)


def resolve_model_path(config: EngineConfig) -> Path:
    """The configured model path, or the bundled demo model when none is set (or ``demo``)."""
    from minerva.demo import resolve_model_arg  # noqa: PLC0415 - optional bundled model

    return resolve_model_arg(config.model.model)


def open_model_source(config: EngineConfig) -> ModelSource:
    """The configured model (HF folder or GGUF file) as a ModelSource: config, tokenizer,
    generation defaults, eos ids and the weight iterator."""
    return open_model(resolve_model_path(config), config.model.tokenizer)


def quant_config_for(
    source: ModelSource, quantization: str | None, kernels: KernelSet
) -> QuantConfig:
    """The linear methods of `source`'s weights: the file's own (GGUF blocks), else in-situ
    quantization to `quantization` (config `[model] quantization`), else dense. A file that is
    already quantized refuses another type: requantizing blocks compounds their error."""
    if source.quantization is not None:
        if quantization is not None and not _same_scheme(quantization, source.quantization):
            raise ConfigError(
                f"{source.path} is already quantized as {source.quantization}, but "
                f"quantization={quantization} was asked for: drop --quantization (or "
                f"MINERVA_QUANTIZATION) to run the file as it is, or quantize its float "
                "original instead"
            )
        return build_quant_config(source.quantization, kernels, source.tensor_types)
    if quantization is not None:
        if quantization in OWN_FORMATS and kernels.name == "cpu":
            logger.warning(
                "quantization=%s has no CPU kernels: each product decodes the weight first "
                "(slow); q8_0 and q4_k_m are the 8- and 4-bit types with CPU kernels",
                quantization,
            )
        return build_insitu_config(quantization, source.config.num_hidden_layers, kernels)
    return build_quant_config(None, kernels)


def _same_scheme(asked: str, file_scheme: str) -> bool:
    return canonical_quantization(asked) == canonical_quantization(file_scheme)


def weight_bytes_of(
    source: ModelSource, dtype: torch.dtype, quantization: str | None = None
) -> int:
    """Bytes the source's weights will take (quantized to `quantization` if set), as its linear
    methods count them (no memory)."""
    quant = quant_config_for(source, quantization, torch_kernels())
    return count_weight_bytes(source.config, dtype, ModelOptions(quant=quant))


class QuantizingWeights:
    """The source's weights with a "Quantizing to <mix>" bar: the model quantizes each one as
    it arrives (load_weights), so the bar advances once a tensor has been taken and quantized.
    Names added to `skip` before the iteration reaches them are never read (a weight cache hit
    holds their quantized pieces, quant/x8_cache_insitu.py); the bar then ends with a jump."""

    def __init__(self, source: ModelSource, device, dtype: torch.dtype, mix: str, progress: bool):
        self.source, self.device, self.dtype = source, device, dtype
        self.mix, self.progress = mix, progress
        self.skip: set[str] = set()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        total = count_weight_bytes(self.source.config, self.dtype)  # float bytes, a tied head once
        weights = self.source.iter_weights(
            device=self.device, dtype=self.dtype, progress=False,
            names_filter=lambda name: name not in self.skip,
        )  # fmt: skip
        done = 0
        with progress_bar(self.progress, total, f"Quantizing to {self.mix}") as advance:
            for name, tensor in weights:
                yield name, tensor
                nbytes = tensor.numel() * tensor.element_size()
                advance(nbytes)
                done += nbytes
            advance(max(total - done, 0))


def quantizing_weights(
    source: ModelSource, device, dtype: torch.dtype, mix: str, progress: bool
) -> QuantizingWeights:
    """The source's weights as the in-situ quantization takes them (QuantizingWeights)."""
    return QuantizingWeights(source, device, dtype, mix, progress)


def weight_cache_for(
    source: ModelSource, config: EngineConfig, device, dtype: torch.dtype | None = None
) -> WeightCache | None:
    """The on-disk cache of repacked weights (quant/x8_cache.py) on the CPU, unless
    `[model] weight_cache` is off: a GGUF file's, or a float folder's in-situ quantization
    (keyed also by the quantization, `dtype` the floats are loaded in and the quantizer)."""
    model = config.model
    if not model.weight_cache or torch.device(device).type != "cpu":
        return None
    insitu = None
    if model.quantization is not None and source.quantization is None:  # an F16 GGUF too
        insitu = {
            "quantization": canonical_quantization(model.quantization),
            "dtype": str(dtype),
            "quantizer": QUANTIZER_VERSION,
        }
    elif source.format != "gguf":
        return None
    return WeightCache(source.files, model.weight_cache_size, insitu=insitu)


def check_lengths(config: EngineConfig, hf) -> int:
    """max_model_len (the config's, else the model's), checked against the scheduler's limits."""
    max_model_len = config.model.max_model_len or hf.max_position_embeddings
    if max_model_len < 2:
        raise ConfigError(f"max_model_len={max_model_len} is too small")
    sched = config.scheduler
    if not sched.enable_chunked_prefill and sched.max_num_batched_tokens < max_model_len:
        raise ConfigError(
            f"max_num_batched_tokens={sched.max_num_batched_tokens} is below max_model_len="
            f"{max_model_len} with chunked prefill off (a whole prompt must fit one step): "
            "raise max_num_batched_tokens, lower max_model_len or enable chunked prefill"
        )
    return max_model_len


def check_model_fits(
    hf,
    dtype,
    spec,
    platform,
    config: EngineConfig,
    max_model_len: int,
    options: ModelOptions | None = None,
) -> None:
    """Refuse, before any allocation and on every device, a model whose weights (as its linear
    methods count them) plus one full-length sequence's KV cache plus estimated activations
    exceed the memory budget (memory_fraction, within memory_limit); the message has the
    numbers."""
    cache = config.cache
    if cache.num_kv_blocks is not None:
        kv = cache.num_kv_blocks * spec.bytes_per_block
    elif cache.kv_cache_memory is not None:
        kv = cache.kv_cache_memory
    else:
        kv = -(-max_model_len // spec.block_size) * spec.bytes_per_block
    weights = count_weight_bytes(hf, dtype, options)
    # the float32 RoPE tables (cos, sin [max_model_len, head_dim]) and their temporaries
    activations = estimate_activation_bytes(hf, config, dtype) + 6 * max_model_len * hf.head_dim * 4
    budget = memory_budget(platform, cache.memory_fraction, cache.memory_limit)[0]
    if weights + kv + activations > budget:
        gib = 2**30
        where = budget_words(platform, cache.memory_fraction, cache.memory_limit)
        raise ConfigError(
            f"the model does not fit on {platform.kind}: {weights / gib:.2f} GiB of "
            f"{_weights_kind(dtype, options)} weights + {kv / gib:.2f} GiB of KV cache (at least "
            f"one sequence of max_model_len={max_model_len}) + ~{activations / gib:.2f} GiB of "
            f"activations = {(weights + kv + activations) / gib:.2f} GiB, but {where}: use a "
            "device with more memory, a smaller model, dtype or quantization, lower "
            "max_model_len / max_num_batched_tokens, or raise memory_fraction / memory_limit"
        )


def _weights_kind(dtype: torch.dtype, options: ModelOptions | None) -> str:
    """'bfloat16' for dense weights, else the quantization ('gguf-q4_k_m')."""
    name = options.quant.name if options is not None else "dense"
    return str(dtype).removeprefix("torch.") if name == "dense" else name


@torch.no_grad()
def init_dummy_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Random weights in place (norm weights 1): speed does not depend on the values."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)
    model.process_weights_after_loading()


def estimate_activation_bytes(hf, config: EngineConfig, dtype: torch.dtype) -> int:
    """One step's activation peak, estimated from the shapes (the CUDA path measures it)."""
    # Rough peak of one step's activations: a few hidden-sized and FFN-sized buffers per
    # token plus float32 logits for every sequence.
    tokens = config.scheduler.max_num_batched_tokens
    elem = torch.tensor([], dtype=dtype).element_size()
    per_token = (6 * hf.hidden_size + 3 * hf.intermediate_size) * elem
    logits = config.scheduler.max_num_seqs * hf.vocab_size * 4 * 3
    return tokens * per_token + logits + (256 << 20)
