"""What a tensor- or pipeline-parallel group needs to hold before it starts: each rank's device,
a configuration and a model it can split (refused with the fix before any rank loads), and every
rank seeing the same model and config (checked across the group at start)."""

from __future__ import annotations

import torch

from minerva.config import EngineConfig
from minerva.distributed import ParallelContext
from minerva.errors import ConfigError
from minerva.quant_names import OWN_FORMATS


def rank_device(config: EngineConfig, rank: int) -> str:
    """Rank r of a group on CUDA uses GPU devices[r], or GPU r (device cuda / auto); one device
    and the CPU keep the configured device."""
    device, devices = config.device.device, config.device.devices
    if world_size_of(config) == 1 or device not in ("auto", "cuda"):
        return device
    if not torch.cuda.is_available():
        return device
    return f"cuda:{devices.split(',')[rank] if devices else rank}"


def world_size_of(config: EngineConfig) -> int:
    """Processes of the engine: tensor_parallel_size x pipeline_parallel_size."""
    return config.device.tensor_parallel_size * config.device.pipeline_parallel_size


def _what(config: EngineConfig) -> str:
    d = config.device
    if d.pipeline_parallel_size > 1:
        return f"pipeline_parallel_size={d.pipeline_parallel_size}"
    return f"tensor_parallel_size={d.tensor_parallel_size}"


def check_config(config: EngineConfig) -> None:
    """What a parallel group does not run yet, refused before anything loads."""
    what = _what(config)
    quantization = config.model.quantization
    if quantization in OWN_FORMATS or str(config.model.model or "").endswith(".gguf"):
        raise ConfigError(
            f"{what} runs safetensors models, float or quantized in situ to a GGUF type "
            "(quantization=q8_0, q4_k_m ...), not GGUF files, fp8, int8 or int4: use the float "
            "original, or run on one device"
        )


def check_model(config: EngineConfig, hf) -> None:
    """Refuse, before any rank starts, a model the group cannot split: whole heads, KV heads
    and MLP columns per tensor-parallel rank, at least one layer per pipeline stage."""
    check_config(config)
    tp = ParallelContext(0, config.device.tensor_parallel_size)
    tp.shard(hf.num_attention_heads, "num_attention_heads")
    tp.shard(hf.num_key_value_heads, "num_key_value_heads")
    tp.shard(hf.intermediate_size, "intermediate_size")
    pp = config.device.pipeline_parallel_size
    if hf.num_hidden_layers < pp:
        raise ConfigError(
            f"pipeline_parallel_size={pp} is more than the model's {hf.num_hidden_layers} "
            "layers: use at most one stage per layer"
        )


def check_same_model(group: ParallelContext, config: EngineConfig, hf, dtype) -> None:
    """Every rank runs the same config on the same model (a rank that read another folder or
    config would compute garbage); a ConfigError on every rank otherwise."""
    mine = (repr(sorted(config.flat().items())), repr(sorted(vars(hf).items())), str(dtype))
    views = group.all_gather_object(mine)
    for rank, view in enumerate(views):
        if view != views[0]:
            raise ConfigError(
                f"parallel rank {rank} sees another model or config than rank 0: give every "
                "rank the same model files and settings"
            )
