"""The weight cache (quant/x8_cache.py) for an in-situ quantization of a float folder: a second
load of the same folder and quantization maps the cached x8 groups, quantizing and repacking
none of them, with the same tokens and logprobs as the first; another quantization, a touched
weight file or the cache off miss (or write nothing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from minerva import LLM
from minerva.loader import checkpoint
from minerva.loader.gguf_export import float_plan, write_gguf
from minerva.loader.hf_config import load_model_config
from minerva.ops import cpu_quant_x8
from minerva.quant import gguf, x8_cache
from minerva.quant.gguf_types import GGMLType
from tests.model.weight_cache_common import (
    cache_files,
    run,
    x8_bytes,
)
from tests.tiny_models import build_tiny_model


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """Calls of the in-situ quantizer (of linear layers) and of the x8 repack."""
    calls = {"quantize": 0, "repack": 0}
    real_quantize, real_repack = gguf.quantize_tensor, cpu_quant_x8.repack

    def quantize(*args, **kwargs):
        calls["quantize"] += 1
        return real_quantize(*args, **kwargs)

    def repack(*args, **kwargs):
        calls["repack"] += 1
        return real_repack(*args, **kwargs)

    monkeypatch.setattr(gguf, "quantize_tensor", quantize)
    monkeypatch.setattr(cpu_quant_x8, "repack", repack)
    return calls


@pytest.fixture
def read(monkeypatch) -> list[str]:
    """Names of the tensors the loader reads from safetensors files."""
    names: list[str] = []
    real = checkpoint.iter_safetensors_file

    def recorded(path, wanted):
        wanted = list(wanted)
        names.extend(wanted)
        return real(path, wanted)

    monkeypatch.setattr(checkpoint, "iter_safetensors_file", recorded)
    return names


LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def load(path: Path, quantization: str, **kwargs) -> LLM:
    kwargs.setdefault("dtype", "float32")
    llm = LLM(model=str(path), device="cpu", max_model_len=128, quantization=quantization, **kwargs)
    x8_cache.wait_for_writes()
    return llm


def first_load(tiny_folder: Path, quantization: str, weights_dir: Path, counted) -> tuple:
    llm = load(tiny_folder, quantization)
    ref = x8_bytes(llm), run(llm)
    if not ref[0]:
        pytest.skip("no x8 layout on this CPU")
    assert counted["quantize"] > 0 and counted["repack"] > 0
    assert len(cache_files(weights_dir)) == 1
    assert list(weights_dir.glob(f"{x8_cache.TEMP_PREFIX}*")) == []  # one file written, no other
    del llm
    return ref


@pytest.mark.parametrize("quantization", ["q4_k_m", "q8_0"])
def test_a_second_load_quantizes_and_repacks_nothing(
    tiny_folder, weights_dir, counted, read, quantization
):
    ref_bytes, ref_run = first_load(tiny_folder, quantization, weights_dir, counted)
    assert any(n.endswith("q_proj.weight") for n in read)
    counted.update(quantize=0, repack=0)
    read.clear()
    llm = load(tiny_folder, quantization)
    assert counted == {"quantize": 0, "repack": 0}
    assert [n for n in read if any(f"{piece}." in n for piece in LINEAR)] == []
    assert "model.embed_tokens.weight" in read and "model.norm.weight" in read
    got = x8_bytes(llm)
    assert got.keys() == ref_bytes.keys()
    for name, data in ref_bytes.items():
        assert torch.equal(got[name], data), name
    assert run(llm) == ref_run
    assert len(cache_files(weights_dir)) == 1


def test_another_quantization_misses(tiny_folder, weights_dir, counted):
    first_load(tiny_folder, "q4_k_m", weights_dir, counted)
    counted.update(quantize=0, repack=0)
    load(tiny_folder, "q8_0")
    assert counted["quantize"] > 0 and counted["repack"] > 0
    assert len(cache_files(weights_dir)) == 2


def test_a_touched_weight_file_misses(tiny_folder, weights_dir, counted):
    first_load(tiny_folder, "q8_0", weights_dir, counted)
    weights = next(tiny_folder.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counted.update(quantize=0, repack=0)
    llm = load(tiny_folder, "q8_0")
    assert counted["quantize"] > 0 and counted["repack"] > 0
    assert x8_bytes(llm)  # loaded as without the cache
    assert len(cache_files(weights_dir)) == 2  # the new key's file (the old one ages out)


def test_another_dtype_misses(tiny_folder, weights_dir, counted):
    """The floats are quantized in the load's dtype: bfloat16 rounds them first."""
    first_load(tiny_folder, "q8_0", weights_dir, counted)
    counted.update(quantize=0, repack=0)
    load(tiny_folder, "q8_0", dtype="bfloat16")
    assert counted["quantize"] > 0 and len(cache_files(weights_dir)) == 2


def test_a_touched_config_misses(tiny_folder, weights_dir, counted):
    first_load(tiny_folder, "q8_0", weights_dir, counted)
    config = tiny_folder / "config.json"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counted.update(quantize=0, repack=0)
    load(tiny_folder, "q8_0")
    assert counted["quantize"] > 0 and counted["repack"] > 0


def test_the_cache_off_writes_nothing(tiny_folder, weights_dir, counted):
    llm = load(tiny_folder, "q4_k_m", weight_cache=False)
    if not x8_bytes(llm):
        pytest.skip("no x8 layout on this CPU")
    assert cache_files(weights_dir) == []
    counted.update(quantize=0, repack=0)
    load(tiny_folder, "q4_k_m", weight_cache=False)
    assert counted["quantize"] > 0 and counted["repack"] > 0


def test_a_damaged_cache_file_is_rebuilt(tiny_folder, weights_dir, counted):
    ref_bytes, ref_run = first_load(tiny_folder, "q4_k_m", weights_dir, counted)
    (path,) = cache_files(weights_dir)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 3)
    counted.update(quantize=0, repack=0)
    llm = load(tiny_folder, "q4_k_m")
    assert counted["quantize"] > 0 and counted["repack"] > 0
    assert run(llm) == ref_run
    assert len(cache_files(weights_dir)) == 1
    counted.update(quantize=0, repack=0)
    assert run(load(tiny_folder, "q4_k_m")) == ref_run  # the rebuilt file serves
    assert counted == {"quantize": 0, "repack": 0}


def test_groups_outside_the_x8_layout_still_load_as_today(tmp_path, weights_dir, counted, read):
    """A vocabulary of 1003 rows cannot take the x8 layout: lm_head is quantized at every load
    (its file-layout blocks are not cached), the rest comes from the cache."""
    odd = tmp_path / "odd"
    build_tiny_model(odd, hidden_size=256, intermediate_size=512, vocab_size=1003)
    ref_bytes, ref_run = first_load(odd, "q4_k_m", weights_dir, counted)
    counted.update(quantize=0, repack=0)
    read.clear()
    llm = load(odd, "q4_k_m")
    assert counted == {"quantize": 1, "repack": 0}  # lm_head only
    assert [n for n in read if any(f"{piece}." in n for piece in LINEAR)] == ["lm_head.weight"]
    assert x8_bytes(llm).keys() == ref_bytes.keys()
    assert run(llm) == ref_run


def test_a_tied_head_is_served_from_the_cache(tmp_path, weights_dir, counted):
    tied = tmp_path / "tied"
    build_tiny_model(tied, hidden_size=256, intermediate_size=512, tie_word_embeddings=True)
    ref_bytes, ref_run = first_load(tied, "q4_k_m", weights_dir, counted)
    assert "lm_head.weight" in ref_bytes  # the head quantized from the embedding, cached
    counted.update(quantize=0, repack=0)
    llm = load(tied, "q4_k_m")
    assert counted == {"quantize": 0, "repack": 0}
    got = x8_bytes(llm)
    assert all(torch.equal(got[name], data) for name, data in ref_bytes.items())
    assert run(llm) == ref_run


def test_an_f16_gguf_quantized_in_situ_is_cached_by_its_quantization(
    tiny_folder, tmp_path, weights_dir, counted
):
    pytest.importorskip("gguf")
    config = load_model_config(tiny_folder)
    tensors = checkpoint.iter_checkpoint_tensors(tiny_folder, "cpu", torch.float32, progress=False)
    f16 = write_gguf(
        config, tensors, tmp_path / "m.gguf", float_plan(GGMLType.F16), file_type="f16"
    )
    ref_bytes, ref_run = first_load(f16, "q8_0", weights_dir, counted)
    counted.update(quantize=0, repack=0)
    llm = load(f16, "q8_0")
    assert counted == {"quantize": 0, "repack": 0}
    assert run(llm) == ref_run
    counted.update(quantize=0, repack=0)
    load(f16, "q4_k_m")  # another quantization of the same file: its own cache file
    assert counted["quantize"] > 0 and len(cache_files(weights_dir)) == 2
