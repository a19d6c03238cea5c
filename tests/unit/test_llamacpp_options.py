"""Minerva's settings as llama.cpp's options (no llama.cpp needed): context, threads, batches,
GPU layers, flash attention, KV cache type and seed, and the combinations refused with a fix."""

from __future__ import annotations

import pytest

from minerva.backends.llamacpp_options import (
    GGML_Q8_0,
    check_supported,
    llama_kwargs,
    placement,
    sampler_kwargs,
)
from minerva.config import EngineConfig
from minerva.errors import ConfigError, RequestError
from minerva.sampling_params import SamplingParams


def _kwargs(gpu_offload: bool = False, n_ctx: int = 1024, **settings):
    config = EngineConfig.from_kwargs(**settings)
    return llama_kwargs(config, "m.gguf", n_ctx, placement(config, gpu_offload), num_threads=3)


def test_the_shared_settings_map_onto_llama_cpp():
    kw = _kwargs(max_num_batched_tokens=4096, seed=11, device="cpu")
    assert kw["n_ctx"] == 1024 and kw["n_batch"] == 1024 and kw["n_ubatch"] == 512
    assert kw["n_threads"] == kw["n_threads_batch"] == 3 and kw["seed"] == 11
    assert kw["n_gpu_layers"] == 0 and kw["flash_attn"] is False and "type_k" not in kw
    assert _kwargs(max_num_batched_tokens=256)["n_batch"] == 256


def test_gpu_layers_and_flash_attention_follow_the_device():
    assert _kwargs(True, device="auto")["n_gpu_layers"] == -1  # a GPU build offloads all
    assert _kwargs(True, device="cuda", gpu_layers=7)["n_gpu_layers"] == 7
    assert _kwargs(True, device="cuda")["flash_attn"] is True
    assert _kwargs(True, device="cuda", flash_attention="off")["flash_attn"] is False
    assert _kwargs(False, device="auto")["n_gpu_layers"] == 0  # a CPU build: none
    with pytest.raises(ConfigError, match="without a GPU backend.*GGML_CUDA"):
        _kwargs(False, device="cuda")
    with pytest.raises(ConfigError, match="gpu_layers=3 with device=cpu"):
        _kwargs(True, device="cpu", gpu_layers=3)


def test_an_8_bit_kv_cache_is_q8_0_with_flash_attention():
    kw = _kwargs(kv_cache_dtype="fp8", device="cpu")
    assert kw["type_k"] == kw["type_v"] == GGML_Q8_0 and kw["flash_attn"] is True
    with pytest.raises(ConfigError, match="needs flash_attention on"):
        _kwargs(kv_cache_dtype="fp8", flash_attention="off", device="cpu")


def test_sampling_maps_and_unsupported_fields_are_400s():
    p = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.2)
    kw = sampler_kwargs(p)
    assert (kw["temp"], kw["top_k"], kw["top_p"], kw["min_p"]) == (0.7, 5, 0.9, 0.1)
    assert kw["repeat_penalty"] == 1.2 and kw["typical_p"] == 1.0
    check_supported(SamplingParams(stop=["x"], seed=3))  # these it does
    for field, params in {
        "n": SamplingParams(n=2),
        "logprobs": SamplingParams(logprobs=1),
        "logit_bias": SamplingParams(logit_bias={1: 2.0}),
        "min_tokens": SamplingParams(min_tokens=2),
    }.items():
        with pytest.raises(RequestError, match=f"does not support {field}") as e:
            check_supported(params)
        assert e.value.param == field
