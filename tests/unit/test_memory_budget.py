"""KV cache sizing from a memory budget, and the refusal of models that cannot fit (no GPU:
a stand-in platform reports the device's memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minerva.config import EngineConfig
from minerva.errors import ConfigError
from minerva.loader.hf_config import _parse_config
from minerva.models.registry import count_weight_bytes
from minerva.runner.kv_cache import KVCacheSpec, plan_num_blocks
from minerva.runner.model_loading import check_model_fits

GIB = 2**30


class FakeGPU:
    """The two things the budget reads from a platform: its kind and (free, total) memory."""

    kind = "cuda"
    is_cuda = True

    def __init__(self, free: int, total: int) -> None:
        self._memory = (free, total)

    def memory(self) -> tuple[int, int]:
        return self._memory


SPEC = KVCacheSpec(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype=torch.bfloat16)


def test_bytes_per_block_of_a_mistral_7b_shape():
    # K and V x 32 layers x 16 tokens x 8 heads x 128 dims x 2 bytes
    assert SPEC.bytes_per_block == 2 * 32 * 16 * 8 * 128 * 2 == 2 * 2**20


def test_kv_blocks_take_the_fraction_left_after_weights_and_activations():
    total, used, reserve = 80 * GIB, 15 * GIB, 3 * GIB
    blocks = plan_num_blocks(
        SPEC,
        FakeGPU(free=total - used, total=total),
        max_model_len=4096,
        max_num_seqs=10_000,
        num_kv_blocks=None,
        kv_cache_memory=None,
        memory_fraction=0.9,
        activation_reserve=reserve,
    )
    budget = int(0.9 * total) - used - reserve
    assert blocks == budget // SPEC.bytes_per_block  # the null block included


def test_kv_blocks_capped_at_every_sequence_at_full_length():
    blocks = plan_num_blocks(
        SPEC,
        FakeGPU(free=80 * GIB, total=80 * GIB),
        max_model_len=256,
        max_num_seqs=4,
        num_kv_blocks=None,
        kv_cache_memory=None,
        memory_fraction=0.9,
    )
    assert blocks == 4 * 256 // 16 + 1


def _mistral_7b():
    return _parse_config(
        {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
        },
        Path("config.json"),
    )


def test_weight_bytes_counted_without_memory():
    # 7.24 B parameters in bf16 (the published Mistral-7B count)
    assert count_weight_bytes(_mistral_7b(), torch.bfloat16) == 14_483_464_192


def test_a_model_that_cannot_fit_is_refused_with_the_numbers():
    hf, config = _mistral_7b(), EngineConfig.from_kwargs(max_model_len=4096)
    small = FakeGPU(free=16 * GIB, total=16 * GIB)  # 0.9 x 16 GiB < 13.5 GiB + KV + activations
    with pytest.raises(ConfigError) as err:
        check_model_fits(hf, torch.bfloat16, SPEC, small, config, 4096)
    message = str(err.value)
    assert "13.49 GiB of bfloat16 weights" in message and "14.40 GiB" in message
    assert "memory_fraction=0.9 of 16.00 GiB" in message
    check_model_fits(hf, torch.bfloat16, SPEC, FakeGPU(80 * GIB, 80 * GIB), config, 4096)


def test_the_plan_counts_quantized_weights():
    """Mistral-7B quantized to q4_k_m while loading fits a 16 GiB GPU that refuses it in bf16;
    the refusal on a smaller one names the quantized size."""
    from minerva.models.options import ModelOptions
    from minerva.quant.gguf import GGUFQuantConfig

    hf, config = _mistral_7b(), EngineConfig.from_kwargs(max_model_len=4096)
    options = ModelOptions(quant=GGUFQuantConfig("q4_k_m", hf.num_hidden_layers))
    weights = count_weight_bytes(hf, torch.bfloat16, options)
    # llama.cpp's Q4_K_M Mistral-7B holds 4.37e9 bytes, its embedding in Q4_K (74 MB); here the
    # embedding stays bf16 (262 MB)
    assert 4.3e9 < weights < 4.7e9
    check_model_fits(hf, torch.bfloat16, SPEC, FakeGPU(16 * GIB, 16 * GIB), config, 4096, options)
    with pytest.raises(ConfigError, match=r"of gguf-q4_k_m weights"):
        check_model_fits(hf, torch.bfloat16, SPEC, FakeGPU(4 * GIB, 4 * GIB), config, 4096, options)


# ---- the same limits on the CPU -----------------------------------------------------------


class FakeCPU(FakeGPU):
    kind = "cpu"
    is_cuda = False


def _cpu_blocks(cpu: FakeCPU, **kw) -> int:
    args = dict(
        max_model_len=4096, max_num_seqs=10_000, num_kv_blocks=None, kv_cache_memory=None,
        memory_fraction=0.9,
    )  # fmt: skip
    return plan_num_blocks(SPEC, cpu, **{**args, **kw})


def test_cpu_kv_cache_obeys_memory_fraction():
    # 40 GiB in use of 100: memory_fraction=0.41 leaves 1 GiB, under the CPU default of 2 GiB
    cpu = FakeCPU(free=60 * GIB, total=100 * GIB)
    reserve = 100 * 2**20
    blocks = _cpu_blocks(cpu, memory_fraction=0.41, activation_reserve=reserve)
    assert blocks == (int(0.41 * 100 * GIB) - 40 * GIB - reserve) // SPEC.bytes_per_block
    assert _cpu_blocks(cpu) == 2 * GIB // SPEC.bytes_per_block  # else the CPU default


def test_cpu_kv_cache_obeys_memory_limit_and_kv_cache_tokens():
    cpu = FakeCPU(free=60 * GIB, total=100 * GIB)
    weights, reserve = 3 * GIB, GIB // 2
    limit = weights + reserve + 300 * SPEC.bytes_per_block + 5  # room for 300 blocks
    kw = dict(memory_limit=limit, engine_bytes=weights, activation_reserve=reserve)
    assert _cpu_blocks(cpu, **kw) == 300  # the null block included
    assert _cpu_blocks(cpu, **kw, kv_cache_tokens=257 * 16 - 3) == 257 + 1
    with pytest.raises(ConfigError, match=r"from memory_limit=.*holds 0 tokens"):
        _cpu_blocks(cpu, memory_limit=weights, engine_bytes=weights)


def test_cpu_kv_cache_is_sized_to_the_sequences_when_that_is_smaller():
    cpu = FakeCPU(free=60 * GIB, total=100 * GIB)
    assert _cpu_blocks(cpu, max_num_seqs=3, max_model_len=100) == -(-3 * 100 // 16) + 1


def test_a_model_beyond_memory_limit_is_refused_on_the_cpu_with_the_numbers():
    hf = _mistral_7b()
    config = EngineConfig.from_kwargs(max_model_len=4096, memory_limit="8G")
    cpu = FakeCPU(free=60 * GIB, total=100 * GIB)
    with pytest.raises(ConfigError) as err:
        check_model_fits(hf, torch.bfloat16, SPEC, cpu, config, 4096)
    message = str(err.value)
    assert message.startswith("the model does not fit on cpu: 13.49 GiB of bfloat16 weights")
    assert "memory_limit=8.00 GiB" in message
    check_model_fits(
        hf, torch.bfloat16, SPEC, cpu, EngineConfig.from_kwargs(max_model_len=4096), 4096
    )
    tight = FakeCPU(free=14 * GIB, total=16 * GIB)  # memory_fraction holds on the CPU too
    with pytest.raises(ConfigError, match=r"memory_fraction=0.9 of 16.00 GiB leaves 12.40 GiB"):
        check_model_fits(hf, torch.bfloat16, SPEC, tight, EngineConfig.from_kwargs(), 4096)


def test_cpu_default_kv_cache_holds_a_few_full_length_sequences():
    cpu = FakeCPU(free=60 * GIB, total=100 * GIB)
    assert _cpu_blocks(cpu, max_num_seqs=256, max_model_len=512) == 16 * 512 // 16 + 1
    sized = _cpu_blocks(cpu, max_num_seqs=256, max_model_len=512, kv_cache_memory=GIB)
    assert sized == GIB // SPEC.bytes_per_block  # an explicit size is taken as given
    gpu = FakeGPU(free=80 * GIB, total=80 * GIB)
    args = dict(num_kv_blocks=None, kv_cache_memory=None, memory_fraction=0.9)
    assert plan_num_blocks(SPEC, gpu, max_model_len=512, max_num_seqs=256, **args) == 8193
