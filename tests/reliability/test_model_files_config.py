"""Crafted config.json values (and GGUF metadata): each is refused with a ModelLoadError or a
ConfigError naming the key, before anything is built: no traceback, no silent truncation of
256.5, no hang on 10^6 layers, no multi-GB RoPE table before the fit check."""

from __future__ import annotations

import json
import shutil

import pytest

from minerva.config import EngineConfig
from minerva.errors import ConfigError, ModelLoadError
from minerva.loader import open_model
from minerva.loader.config_checks import MAX_LAYERS
from tests.e2e.tiny_server_model import build_server_model
from tests.reliability.input_app import figure

CRAFTED = {  # name -> (config.json changes, a word the error must contain)
    "hidden_size 256.5": ({"hidden_size": 256.5}, "hidden_size"),
    "hidden_size as text": ({"hidden_size": "64"}, "hidden_size"),
    "hidden_size a list": ({"hidden_size": [64]}, "hidden_size"),
    "hidden_size true": ({"hidden_size": True}, "hidden_size"),
    "10^6 layers": ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
    "0 layers": ({"num_hidden_layers": 0}, "num_hidden_layers"),
    "negative heads": ({"num_attention_heads": -4}, "num_attention_heads"),
    "kv heads not dividing": ({"num_key_value_heads": 3}, "num_key_value_heads"),
    "hidden not divisible by heads": (
        {"num_attention_heads": 5, "head_dim": None},
        "num_attention_heads",
    ),  # fmt: skip
    "odd head_dim": ({"head_dim": 15}, "head_dim"),
    "vocab 10^12": ({"vocab_size": 10**12}, "vocab_size"),
    "intermediate 10^9": ({"intermediate_size": 10**9}, "intermediate_size"),
    "context 2^40": ({"max_position_embeddings": 2**40}, "max_position_embeddings"),
    "5000-digit integer": ({"vocab_size": "<5000 digits>"}, "integer literal"),
    "eps NaN": ({"rms_norm_eps": float("nan")}, "rms_norm_eps"),
    "eps negative": ({"rms_norm_eps": -1e-6}, "rms_norm_eps"),
    "rope_theta 0": ({"rope_theta": 0}, "rope_theta"),
    "rope_theta inf": ({"rope_theta": float("inf")}, "rope_theta"),
    "unknown rope type": ({"rope_scaling": {"rope_type": "warp"}}, "rope_type"),
    "linear rope without factor": ({"rope_scaling": {"rope_type": "linear"}}, "factor"),
    "negative rope factor": ({"rope_scaling": {"rope_type": "linear", "factor": -2}}, "factor"),
    "rope_scaling a string": ({"rope_scaling": "yarn"}, "rope_scaling"),
    "tie_word_embeddings 'yes'": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    "eos id text": ({"eos_token_id": "</s>"}, "eos_token_id"),
    "layer_types bogus": ({"layer_types": ["full_attention", "warp"]}, "layer_types"),
    "architectures a string": ({"architectures": "LlamaForCausalLM"}, "architectures"),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def _crafted(model_dir, tmp_path, changes: dict):
    folder = tmp_path / "crafted"
    shutil.copytree(model_dir, folder)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    text = json.dumps(cfg)  # NaN / Infinity as Python writes them
    text = text.replace('"<5000 digits>"', "9" * 5000)  # json.dumps refuses to write it
    (folder / "config.json").write_text(text)
    return folder


def test_crafted_config_values_are_refused_naming_the_key(model_dir, tmp_path):
    wrong = {}
    for name, (changes, word) in CRAFTED.items():
        folder = _crafted(model_dir, tmp_path / name.replace(" ", "_"), changes)
        try:
            open_model(folder)
            wrong[name] = "accepted"
        except ModelLoadError as e:
            if word not in str(e) or "config.json" not in str(e):
                wrong[name] = str(e)[:200]
        except Exception as e:  # noqa: BLE001 - what the scenario counts
            wrong[name] = f"{type(e).__name__}: {e}"[:200]
    figure("crafted config.json", f"{len(CRAFTED) - len(wrong)} of {len(CRAFTED)} crafted values "
           "refused with a ModelLoadError naming the key, before anything was built")  # fmt: skip
    assert not wrong


def test_every_bad_value_is_listed_at_once(model_dir, tmp_path):
    folder = _crafted(model_dir, tmp_path, {"hidden_size": 1.5, "num_hidden_layers": -1})
    with pytest.raises(ModelLoadError, match="hidden_size") as err:
        open_model(folder)
    assert "num_hidden_layers" in str(err.value)


def test_the_fit_check_counts_the_rope_table_before_building(model_dir, tmp_path):
    """A long context with a small KV cache: the RoPE tables alone (6 GiB here) would be
    allocated by the model build; the fit check refuses first."""
    from minerva.engine.llm_engine import LLMEngine

    folder = _crafted(model_dir, tmp_path, {"max_position_embeddings": 1 << 24})
    config = EngineConfig.from_kwargs(
        model=str(folder), device="cpu", dtype="float32", num_kv_blocks=64,
        memory_limit="2GiB", num_threads=1,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="does not fit"):
        LLMEngine(config, progress=False)


def test_the_largest_allowed_shape_is_refused_by_the_fit_check_quickly(model_dir, tmp_path):
    from minerva.engine.llm_engine import LLMEngine

    big = {"num_hidden_layers": MAX_LAYERS, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
           "num_attention_heads": 512, "num_key_value_heads": 512, "head_dim": 128}  # fmt: skip
    folder = _crafted(model_dir, tmp_path, big)
    config = EngineConfig.from_kwargs(model=str(folder), device="cpu", num_threads=1)
    with pytest.raises(ConfigError, match="does not fit"):
        LLMEngine(config, progress=False)


def test_crafted_gguf_metadata_gets_the_same_checks(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from tests.gguf_fixtures import write_gguf
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path / "hf", "llama", num_hidden_layers=1)
    model.config.max_position_embeddings = 1 << 31  # a crafted context_length
    path = write_gguf(model, tmp_path / "crafted.gguf")
    with pytest.raises(ModelLoadError, match="max_position_embeddings") as err:
        open_model(path)
    assert "GGUF metadata" in str(err.value)
