"""Minerva's settings as llama.cpp's options: the engine config -> ``Llama(...)`` keyword
arguments, and a request's SamplingParams -> ``Llama.generate(...)`` sampler arguments.

Where llama.cpp has no equivalent the choice is an error naming the fix, never silently
ignored: a request field the backend cannot honour is a RequestError (400) that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minerva.config import EngineConfig
from minerva.errors import ConfigError, RequestError
from minerva.sampling_params import SamplingParams

# ggml type ids (ggml.h): what llama.cpp stores its K and V caches as.
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
KV_TYPES: dict[str, int | None] = {
    "auto": None,  # llama.cpp's default: F16
    "float32": GGML_F32,
    "float16": GGML_F16,
    "bfloat16": GGML_BF16,
    # llama.cpp has no 8-bit float cache: its 8-bit cache is Q8_0 blocks (an int8 + a scale
    # per 32 values), the nearest in size and error to fp8.
    "float8_e4m3fn": GGML_Q8_0,
    "float8_e5m2": GGML_Q8_0,
}
UBATCH_MAX = 512
"""llama.cpp's default physical batch: larger ones only grow its compute buffers."""
HONOURED_NOTE = (
    "seeds are honoured (same seed, same text on llama.cpp; not the same text as the minerva "
    "engine, whose sampler differs); repetition_penalty looks at the last 64 tokens"
)

UNSUPPORTED_NOTE = (
    "n > 1, logprobs, logit_bias, min_tokens, structured output, embeddings, prompt logprobs "
    "(each a 400 naming --backend minerva)"
)


@dataclass(frozen=True)
class Placement:
    """Where the layers run."""

    gpu_layers: int
    """Layers offloaded (-1: all)."""

    @property
    def device(self) -> str:
        return "cpu" if self.gpu_layers == 0 else "cuda"


def placement(config: EngineConfig, gpu_offload: bool) -> Placement:
    """gpu_layers from the device and ``[llamacpp] gpu_layers`` (gpu_offload: whether this
    llama-cpp-python build has a GPU backend)."""
    device, layers = config.device.device, config.llamacpp.gpu_layers
    wants_gpu = device.startswith(("cuda", "mps")) or (device == "auto" and gpu_offload)
    if device == "cpu" and layers:
        raise ConfigError(f"gpu_layers={layers} with device=cpu: drop one of them")
    if wants_gpu and not gpu_offload:
        raise ConfigError(
            f"device={device}, but this llama-cpp-python was built without a GPU backend: "
            'reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_METAL=on), or use '
            "device=cpu"
        )
    if not wants_gpu:
        return Placement(0)
    return Placement(-1 if layers is None else layers)


def llama_kwargs(
    config: EngineConfig, model_path: str, n_ctx: int, where: Placement, num_threads: int
) -> dict[str, Any]:
    """``Llama(**kwargs)`` for one context of the pool."""
    kv = config.cache.kv_cache_dtype
    kv_type = KV_TYPES.get(kv)
    if kv not in KV_TYPES:
        raise ConfigError(f"kv_cache_dtype={kv} has no llama.cpp cache type: use auto or fp8")
    flash = config.llamacpp.flash_attention
    quantized_v = kv_type == GGML_Q8_0
    if quantized_v and flash == "off":  # llama.cpp reads a quantized V cache only this way
        raise ConfigError(
            "kv_cache_dtype=fp8 (llama.cpp's Q8_0 cache) needs flash_attention on: drop "
            "flash_attention=off or kv_cache_dtype"
        )
    use_flash = flash == "on" or (flash == "auto" and (where.gpu_layers != 0 or quantized_v))
    n_batch = min(config.scheduler.max_num_batched_tokens, n_ctx)
    kwargs: dict[str, Any] = dict(
        model_path=model_path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=min(n_batch, UBATCH_MAX),
        n_threads=num_threads,
        n_threads_batch=num_threads,
        n_gpu_layers=where.gpu_layers,
        flash_attn=use_flash,
        seed=config.model.seed,
        use_mmap=True,  # the contexts of a pool share the weights' pages
        verbose=False,
    )
    if kv_type is not None:
        kwargs.update(type_k=kv_type, type_v=kv_type)
    return kwargs


def check_supported(params: SamplingParams) -> None:
    """RequestError for request fields the llamacpp backend does not implement."""
    unsupported = {
        "n": params.n > 1,
        "logprobs": params.logprobs is not None,
        "logit_bias": bool(params.logit_bias),
        "min_tokens": params.min_tokens > 0,
        "structured output": params.structured is not None,
        "pooling": params.pooling is not None,
        "token_healing": params.token_healing,
    }
    for name, asked in unsupported.items():
        if asked:
            raise RequestError(
                f"the llamacpp backend does not support {name}: drop it, or serve the model "
                "with --backend minerva",
                param=name.split()[0],
            )


def sampler_kwargs(params: SamplingParams) -> dict[str, Any]:
    """``Llama.generate`` arguments: llama.cpp's chain is penalties, top-k, top-p, min-p,
    temperature, then a draw (temperature 0: greedy); top_k 0 and top_p 1 turn those off."""
    return dict(
        temp=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        min_p=params.min_p,
        typical_p=1.0,
        repeat_penalty=params.repetition_penalty,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
    )
