"""`[model] quantization`: every spelling (llama.cpp's, mistral.rs's, any case) from TOML, the
environment and the CLI lands on one canonical name; a GGUF file that is already quantized
refuses another type, naming both."""

from __future__ import annotations

import argparse

import pytest

from minerva.config import EngineConfig, add_config_arguments, load_config, overrides_from_args
from minerva.errors import ConfigError
from minerva.ops.kernels import torch_kernels
from minerva.quant.gguf import GGUFQuantConfig
from minerva.quant.gguf_file_config import GGUFFileQuantConfig
from minerva.quant.gguf_mix import MIXES, PLAIN
from minerva.quant_names import OWN_FORMATS, QUANTIZATIONS
from minerva.runner.model_loading import quant_config_for


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("Q4K", "q4_k"), ("Q5K", "q5_k"), ("Q8_0", "q8_0"), ("Q8_1", "q8_1"), ("q4_k_m", "q4_k_m"),
     ("Q5_K_M", "q5_k_m"), ("q2k", "q2_k"), ("Q3K", "q3_k"), ("Q6K", "q6_k"), ("Q4_0", "q4_0")],
)  # fmt: skip
def test_spellings_normalise_everywhere(given, canonical):
    assert load_config(None, {"quantization": given}, env={})[0].model.quantization == canonical
    env = {"MINERVA_QUANTIZATION": given}
    assert load_config(None, None, env=env)[0].model.quantization == canonical
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--quantization", given])
    assert load_config(None, overrides_from_args(args), env={})[0].model.quantization == canonical


def test_every_choice_has_a_type_mix_and_unknown_names_list_them():
    assert set(QUANTIZATIONS) == set(PLAIN) | set(MIXES) | set(OWN_FORMATS)  # not GGUF types
    with pytest.raises(ConfigError, match="q4_k_m"):
        load_config(None, {"quantization": "iq2_xs"}, env={})
    assert EngineConfig.from_kwargs().model.quantization is None


class FakeSource:
    """What quant_config_for reads from a ModelSource."""

    def __init__(self, quantization, tensor_types=None) -> None:
        from tests.tiny_models import make_config

        self.path, self.quantization, self.tensor_types = "m.gguf", quantization, tensor_types
        self.config = make_config("llama")


def test_a_quantized_file_keeps_its_own_type():
    types = {"model.layers.0.mlp.down_proj.weight": 14}
    source = FakeSource("Q4_K_M", types)
    kernels = torch_kernels()
    assert isinstance(quant_config_for(source, None, kernels), GGUFFileQuantConfig)
    assert isinstance(quant_config_for(source, "q4_k_m", kernels), GGUFFileQuantConfig)
    with pytest.raises(ConfigError, match=r"already quantized as Q4_K_M.*quantization=q8_0"):
        quant_config_for(source, "q8_0", kernels)
    float_source = FakeSource(None)
    assert isinstance(quant_config_for(float_source, "q8_0", kernels), GGUFQuantConfig)
    assert quant_config_for(float_source, None, kernels).name == "dense"


def test_a_gguf_files_layers_run_the_types_the_file_holds():
    from minerva.quant.gguf_types import GGMLType as T

    p = "model.layers.0."
    types = {
        p + "self_attn.q_proj.weight": T.F16, p + "self_attn.k_proj.weight": T.F16,
        p + "self_attn.v_proj.weight": T.F16, p + "self_attn.o_proj.weight": T.Q8_0,
        p + "mlp.gate_proj.weight": T.Q4_K, p + "mlp.up_proj.weight": T.F16,
        "model.embed_tokens.weight": T.Q6_K,
    }  # fmt: skip
    config = GGUFFileQuantConfig("Q4_K_M", types, torch_kernels())
    assert config.get_method(p + "self_attn.qkv_proj").name == "dense"  # all float
    assert config.get_method(p + "self_attn.o_proj").name == "gguf"
    assert config.get_method(p + "mlp.gate_up_proj").name == "gguf"  # a float piece as F16
    assert config.type_of(p + "mlp.gate_up_proj", 1) == T.F16
    assert config.type_of("lm_head", None) == T.Q6_K  # tied: the embedding's blocks
