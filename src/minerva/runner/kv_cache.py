"""Size the paged KV cache from a memory budget and allocate it once, one tensor per layer."""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch

from minerva.dtypes import KV_CACHE_DTYPES, canonical_kv_cache_dtype
from minerva.errors import ConfigError
from minerva.platform import Platform

CPU_DEFAULT_FRACTION = 0.05  # of available RAM
CPU_DEFAULT_CAP = 2 << 30  # bytes
CPU_DEFAULT_SEQUENCES = 16
"""Full-length sequences the CPU's default KV cache holds at most: a CPU serves few requests at
once, and a cache sized for max_num_seqs=256 made a 23 MB model take 1.4 GB of RAM."""


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        """K and V of every layer; an 8-bit cache stores no scales (its scale is 1.0)."""
        elem = self.dtype.itemsize
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
"""8-bit KV cache dtypes: stored with a scale of 1.0, as vLLM's fp8 cache does by default."""


def resolve_kv_cache_dtype(
    name: str, model_dtype: torch.dtype, platform: Platform, attention: str
) -> torch.dtype:
    """The KV cache dtype for config's kv_cache_dtype ('auto': the model's); one the device or
    the attention backend cannot run is a ConfigError naming the choices."""
    key = canonical_kv_cache_dtype(name)
    if key not in KV_CACHE_DTYPES:
        raise ConfigError(f"kv_cache_dtype={name!r} is unknown: use {', '.join(KV_CACHE_DTYPES)}")
    if key == "auto":
        return model_dtype
    dtype = getattr(torch, key)
    if dtype in FP8_DTYPES:
        if platform.kind not in ("cpu", "cuda"):
            raise ConfigError(
                f"kv_cache_dtype={name} needs a CPU or CUDA device ({platform.name} has no "
                "8-bit floats): use kv_cache_dtype=auto, float16 or float32"
            )
        if attention == "triton" and not platform.supports_fp8:
            raise ConfigError(
                f"kv_cache_dtype={name} with the Triton attention kernels needs a GPU with fp8 "
                "(compute capability 8.9+: Ada, Hopper): use attention_backend=torch with it, "
                "or kv_cache_dtype=auto, float16 or bfloat16"
            )
    elif not platform.supports_dtype(dtype):
        raise ConfigError(
            f"kv_cache_dtype={name} is not supported on {platform.name}: "
            "use auto, float16 or float32"
        )
    return dtype


def _fmt(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory_budget(
    platform: Platform, memory_fraction: float, memory_limit: int | None = None
) -> tuple[int, int, int]:
    """(bytes this engine may still take, total device bytes, bytes already used): what
    memory_fraction of the device (RAM on the CPU) leaves after what is in use, and at most
    memory_limit when it is set."""
    free, total = platform.memory()
    used = total - free
    budget = int(total * memory_fraction) - used
    return (budget if memory_limit is None else min(budget, memory_limit)), total, used


def budget_words(platform: Platform, memory_fraction: float, memory_limit: int | None) -> str:
    """Where ``memory_budget``'s figure comes from, in words, for error messages."""
    budget, total, used = memory_budget(platform, memory_fraction)
    words = (
        f"memory_fraction={memory_fraction} of {_fmt(total)} leaves {_fmt(max(budget, 0))} "
        f"({_fmt(used)} already in use)"
    )
    if memory_limit is not None and memory_limit < budget:
        return f"memory_limit={_fmt(memory_limit)} (and {words})"
    return words


def kv_cache_budget(
    platform: Platform,
    memory_fraction: float,
    kv_cache_memory: int | None,
    activation_reserve: int = 0,
    *,
    memory_limit: int | None = None,
    engine_bytes: int = 0,
) -> tuple[int, str]:
    """(bytes for the KV cache, where that figure comes from), on every device: what
    memory_fraction leaves after what is already in use (the weights, once loaded) and the
    activation reserve, within memory_limit minus ``engine_bytes`` (this engine's weights);
    on the CPU also at most its default share of free RAM. kv_cache_memory overrides all."""
    if kv_cache_memory is not None:
        return kv_cache_memory, f"kv_cache_memory={_fmt(kv_cache_memory)}"
    budget, total, used = memory_budget(platform, memory_fraction)
    budget -= activation_reserve
    source = f"memory_fraction={memory_fraction} of {_fmt(total)} ({_fmt(used)} already in use)"
    if memory_limit is not None and memory_limit - engine_bytes - activation_reserve < budget:
        budget = memory_limit - engine_bytes - activation_reserve
        source = (
            f"memory_limit={_fmt(memory_limit)} less {_fmt(engine_bytes)} of weights and "
            f"{_fmt(activation_reserve)} of activations"
        )
    if platform.kind == "cpu":
        free, _ = platform.memory()
        default = min(int(free * CPU_DEFAULT_FRACTION), CPU_DEFAULT_CAP)
        if default < budget:
            cap = _fmt(CPU_DEFAULT_CAP)
            budget = default
            source = f"the CPU default ({CPU_DEFAULT_FRACTION:.0%} of free RAM, at most {cap})"
    return budget, source


def plan_num_blocks(
    spec: KVCacheSpec,
    platform: Platform,
    *,
    max_model_len: int,
    max_num_seqs: int,
    num_kv_blocks: int | None,
    kv_cache_memory: int | None,
    memory_fraction: float,
    activation_reserve: int = 0,
    memory_limit: int | None = None,
    engine_bytes: int = 0,
    kv_cache_tokens: int | None = None,
    extra_bytes_per_block: int = 0,
) -> int:
    """Number of blocks (including the reserved null block 0) the budget allows: never more
    than every sequence at full length (max_num_seqs x max_model_len; on the CPU by default at
    most CPU_DEFAULT_SEQUENCES of them) or kv_cache_tokens.
    extra_bytes_per_block: another cache on the same block ids (a draft model's)."""
    needed_one = math.ceil(max_model_len / spec.block_size)
    seqs = max_num_seqs
    if platform.kind == "cpu" and kv_cache_memory is None and kv_cache_tokens is None:
        seqs = min(seqs, CPU_DEFAULT_SEQUENCES)  # the CPU default: sized to the model
    useful = math.ceil(seqs * max_model_len / spec.block_size)
    if num_kv_blocks is not None:
        usable = num_kv_blocks - 1
        source = f"num_kv_blocks={num_kv_blocks}"
    else:
        budget, source = kv_cache_budget(
            platform, memory_fraction, kv_cache_memory, activation_reserve,
            memory_limit=memory_limit, engine_bytes=engine_bytes,
        )  # fmt: skip
        # The budget holds the null block too: what is allocated never exceeds it.
        per_block = spec.bytes_per_block + extra_bytes_per_block
        usable = min(max(budget, 0) // per_block - 1, useful)
        if kv_cache_tokens is not None and math.ceil(kv_cache_tokens / spec.block_size) < usable:
            usable = math.ceil(kv_cache_tokens / spec.block_size)
            source = f"kv_cache_tokens={kv_cache_tokens}"
    if usable < needed_one:
        raise ConfigError(
            f"the KV cache from {source} holds {max(usable, 0) * spec.block_size} tokens "
            f"({_fmt(max(usable, 0) * spec.bytes_per_block)}), less than one sequence of "
            f"max_model_len={max_model_len} tokens ({_fmt(needed_one * spec.bytes_per_block)}): "
            "raise kv_cache_memory / memory_fraction / memory_limit / num_kv_blocks / "
            "kv_cache_tokens or lower max_model_len"
        )
    return usable + 1


def allocate_kv_caches(
    spec: KVCacheSpec, num_blocks: int, device: torch.device
) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer."""
    shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    if device.type == "cpu":
        return [_lazy_zeros(shape, spec.dtype) for _ in range(spec.num_layers)]
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeros in an anonymous mapping: the kernel hands out a page when it is first written, so
    the cache costs resident memory in proportion to the context in use, not to its size
    (torch.zeros writes every page at once). The tensor keeps the mapping alive; the pages go
    back to the system when it is freed."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    try:
        area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):  # no anonymous mappings here
        return torch.zeros(shape, dtype=dtype)
    return torch.frombuffer(area, dtype=torch.uint8).view(dtype).view(shape)
