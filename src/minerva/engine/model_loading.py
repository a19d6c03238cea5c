"""From an EngineConfig to a ready model: platform, config, tokenizer, weights, KV cache."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from minerva.attention import select_attention_backend
from minerva.config import EngineConfig
from minerva.errors import ConfigError
from minerva.loader import ModelSource, open_model
from minerva.models import build_model
from minerva.models.registry import count_weight_bytes
from minerva.platform import Platform, parse_dtype, resolve_dtype, resolve_platform, set_num_threads
from minerva.runner.kv_cache import (
    KVCacheSpec,
    allocate_kv_caches,
    memory_budget,
    plan_num_blocks,
)
from minerva.runner.memory_profile import profile_activation_memory
from minerva.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    platform: Platform
    dtype: torch.dtype
    hf_config: object
    tokenizer: Tokenizer | None
    generation_defaults: dict
    eos_token_ids: list[int]
    max_model_len: int
    model: torch.nn.Module
    kv_caches: list[torch.Tensor]
    num_kv_blocks: int
    weight_bytes: int
    attention_backend: object
    kv_cache_bytes: int = 0
    activation_reserve: int = 0
    """Bytes kept free for one step's activations (measured on CUDA) when sizing the KV cache."""
    source: ModelSource | None = None


def resolve_model_path(config: EngineConfig) -> Path:
    """The configured model path, or the bundled demo model when none is set."""
    path = config.model.model
    if path is None:
        from minerva.demo import demo_model_path  # noqa: PLC0415 - optional bundled model

        path = demo_model_path()
    return Path(os.path.expanduser(str(path)))


def open_model_source(config: EngineConfig) -> ModelSource:
    return open_model(resolve_model_path(config), config.model.tokenizer)


def load_model(config: EngineConfig, progress: bool = True) -> LoadedModel:
    """Load everything the engine needs; every user-caused failure is a MinervaError."""
    platform = resolve_platform(config.device.device)
    if platform.kind == "cpu":
        set_num_threads(config.device.num_threads)
    source = open_model_source(config)
    hf = source.config
    tokenizer = source.tokenizer
    dtype = resolve_dtype(platform, config.model.dtype, getattr(hf, "torch_dtype", None))
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

    kv_dtype = parse_dtype(config.cache.kv_cache_dtype) or dtype
    spec = KVCacheSpec(
        num_layers=hf.num_hidden_layers,
        num_kv_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim,
        block_size=config.cache.block_size,
        dtype=kv_dtype,
    )
    if platform.is_cuda:
        check_model_fits(hf, dtype, spec, platform, config, max_model_len)
    model = build_model(hf, dtype, platform.device, max_positions=max_model_len)
    if config.model.load_format == "dummy":
        init_dummy_weights(model, seed=config.model.seed)
    else:
        model.load_weights(
            source.iter_weights(device=platform.device, dtype=dtype, progress=progress)
        )
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    backend = select_attention_backend(
        config.device.attention_backend,
        platform.kind,
        platform.num_sms,
        cpu_kernels=config.device.cpu_kernels,
    )
    model.set_attention_backend(backend)
    if platform.kind == "cpu":
        model.use_cpu_kernels(config.device.cpu_kernels)

    if platform.is_cuda:
        reserve = profile_activation_memory(
            model,
            spec,
            platform,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            max_num_seqs=sched.max_num_seqs,
            max_model_len=max_model_len,
            include_graphs=not config.device.enforce_eager,
        )
    else:
        reserve = estimate_activation_bytes(hf, config, dtype)
    num_blocks = plan_num_blocks(
        spec,
        platform,
        max_model_len=max_model_len,
        max_num_seqs=config.scheduler.max_num_seqs,
        num_kv_blocks=config.cache.num_kv_blocks,
        kv_cache_memory=config.cache.kv_cache_memory,
        memory_fraction=config.cache.memory_fraction,
        activation_reserve=reserve,
    )
    kv_caches = allocate_kv_caches(spec, num_blocks, platform.device)
    logger.info(
        "weights %.2f GiB, KV cache %d blocks = %d tokens (%.2f GiB), activations reserve %.2f GiB",
        weight_bytes / 2**30,
        num_blocks,
        (num_blocks - 1) * spec.block_size,
        num_blocks * spec.bytes_per_block / 2**30,
        reserve / 2**30,
    )

    return LoadedModel(
        platform=platform,
        dtype=dtype,
        hf_config=hf,
        tokenizer=tokenizer,
        generation_defaults=source.generation_defaults,
        eos_token_ids=source.eos_token_ids,
        max_model_len=max_model_len,
        model=model,
        kv_caches=kv_caches,
        num_kv_blocks=num_blocks,
        weight_bytes=weight_bytes,
        attention_backend=backend,
        kv_cache_bytes=num_blocks * spec.bytes_per_block,
        activation_reserve=reserve,
        source=source,
    )


def check_model_fits(hf, dtype, spec, platform, config: EngineConfig, max_model_len: int) -> None:
    """Refuse, before any allocation, a model whose weights plus one full-length sequence's KV
    cache plus estimated activations exceed the memory budget; the message has the numbers."""
    cache = config.cache
    if cache.num_kv_blocks is not None:
        kv = cache.num_kv_blocks * spec.bytes_per_block
    elif cache.kv_cache_memory is not None:
        kv = cache.kv_cache_memory
    else:
        kv = -(-max_model_len // spec.block_size) * spec.bytes_per_block
    weights = count_weight_bytes(hf, dtype)
    activations = estimate_activation_bytes(hf, config, dtype)
    budget, total, used = memory_budget(platform, cache.memory_fraction)
    if weights + kv + activations > budget:
        gib = 2**30
        raise ConfigError(
            f"the model does not fit: {weights / gib:.2f} GiB of {str(dtype).removeprefix('torch.')} "
            f"weights + {kv / gib:.2f} GiB of KV cache (at least one sequence of "
            f"max_model_len={max_model_len}) + ~{activations / gib:.2f} GiB of activations, but "
            f"memory_fraction={cache.memory_fraction} of {total / gib:.2f} GiB leaves "
            f"{budget / gib:.2f} GiB ({used / gib:.2f} GiB already in use): use a GPU "
            "with more memory, a smaller model or dtype, lower max_model_len / "
            "max_num_batched_tokens, or raise memory_fraction"
        )


@torch.no_grad()
def init_dummy_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Random weights in place (norm weights 1): speed does not depend on the values."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=gen)


def estimate_activation_bytes(hf, config: EngineConfig, dtype: torch.dtype) -> int:
    """One step's activation peak, estimated from the shapes (the CUDA path measures it)."""
    # Rough peak of one step's activations: a few hidden-sized and FFN-sized buffers per
    # token plus float32 logits for every sequence.
    tokens = config.scheduler.max_num_batched_tokens
    elem = torch.tensor([], dtype=dtype).element_size()
    per_token = (6 * hf.hidden_size + 3 * hf.intermediate_size) * elem
    logits = config.scheduler.max_num_seqs * hf.vocab_size * 4 * 3
    return tokens * per_token + logits + (256 << 20)
