"""open_model: an HF folder opens as a ModelSource whose config, defaults, tokenizer and weights
equal what the folder holds; paths that are not a model say what was found and what works."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest
import torch

from minerva.errors import ModelLoadError
from minerva.loader import load_model_config, open_model
from tests.tiny_models import build_tiny_model, build_tiny_text_model

pytest.importorskip("transformers")


def test_hf_folder_source_matches_the_folder(tmp_path):
    model = build_tiny_model(tmp_path, "qwen2")
    source = open_model(tmp_path)
    assert source.format == "safetensors" and source.quantization is None
    assert source.config == load_model_config(tmp_path)
    weights = dict(source.iter_weights(dtype=torch.float32, progress=False))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert set(weights) == set(model.state_dict()) - tied
    for name, tensor in weights.items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_digest_is_the_sha256_of_the_files_in_order(tmp_path):
    build_tiny_model(tmp_path, "llama")
    source = open_model(tmp_path)
    names = [p.name for p in source.files]
    assert names == ["config.json", "generation_config.json", "model.safetensors"]
    expected = hashlib.sha256(b"".join(p.read_bytes() for p in source.files)).hexdigest()
    assert source.digest() == "sha256:" + expected
    assert source.num_bytes == sum(p.stat().st_size for p in source.files)


def test_pytorch_bin_folder(tmp_path):
    model = build_tiny_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    source = open_model(tmp_path)
    assert source.format == "pytorch"
    weights = dict(source.iter_weights(progress=False))
    assert torch.equal(weights["model.norm.weight"], model.state_dict()["model.norm.weight"])


def test_generation_defaults_and_eos(tmp_path):
    build_tiny_text_model(tmp_path)
    gen = {"eos_token_id": [7, 9], "temperature": 0.6, "top_p": 0.9, "do_sample": True}
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    source = open_model(tmp_path)
    assert source.generation_defaults == {"temperature": 0.6, "top_p": 0.9}
    assert source.eos_token_ids == [7, 9, source.tokenizer.eos_token_id]
    gen["do_sample"] = False
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    assert open_model(tmp_path).generation_defaults == {"temperature": 0.0, "top_p": 0.9}


def test_tokenizer_and_chat_template(tmp_path):
    build_tiny_text_model(tmp_path)
    source = open_model(tmp_path)
    assert source.tokenizer is not None and source.tokenizer.encode("hi")
    assert source.chat_template and source.chat_template == source.tokenizer.chat_template


def test_no_tokenizer_warns_and_gives_none(tmp_path, caplog):
    build_tiny_model(tmp_path, "llama")
    with caplog.at_level(logging.WARNING):
        source = open_model(tmp_path)
        assert source.tokenizer is None
    assert "no tokenizer" in caplog.text and str(tmp_path) in caplog.text
    assert source.chat_template is None
    assert source.eos_token_ids == [2]  # from config.json / generation_config.json


def test_tokenizer_path_overrides(tmp_path):
    build_tiny_text_model(tmp_path / "tok")
    build_tiny_model(tmp_path / "model", "llama")
    source = open_model(tmp_path / "model", tokenizer_path=tmp_path / "tok")
    assert source.tokenizer is not None and source.tokenizer.name == str(tmp_path / "tok")
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        _ = open_model(tmp_path / "model", tokenizer_path=tmp_path / "model").tokenizer


def test_config_only_folder_opens_for_dummy_weights(tmp_path):
    build_tiny_model(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    source = open_model(tmp_path)
    assert source.config.num_hidden_layers == 2
    with pytest.raises(ModelLoadError, match="no weight files"):
        next(source.iter_weights(progress=False))


def test_missing_path_names_what_is_supported(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        open_model(tmp_path / "nope")
    assert ".gguf" in str(err.value) and "config.json" in str(err.value)


def test_a_file_that_is_not_a_model_says_what_it_is(tmp_path):
    build_tiny_model(tmp_path, "llama")
    with pytest.raises(ModelLoadError) as err:
        open_model(tmp_path / "model.safetensors")
    msg = str(err.value)
    assert "is a file" in msg and ".gguf" in msg and f"pass its folder {str(tmp_path)!r}" in msg
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"is a file \(\.txt"):
        open_model(tmp_path / "notes.txt")


def test_folder_with_only_a_gguf_points_at_the_file(tmp_path):
    (tmp_path / "m-Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="pass the .gguf file itself"):
        open_model(tmp_path)


def test_folder_without_config_is_named(tmp_path):
    build_tiny_model(tmp_path / "m", "llama")
    shutil.copy(tmp_path / "m" / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="config.json not found"):
        open_model(tmp_path)
