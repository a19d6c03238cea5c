"""Checkpoint loading vs transformers: configs parse to transformers' values, tensors stream back
bit-equal to the model's state_dict (single, sharded, .bin), and broken folders give ModelLoadError."""

from __future__ import annotations

import collections
import copy
import gc
import json
import re
import struct
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from minerva.errors import ModelLoadError
from minerva.loader import (
    SUPPORTED_ARCHITECTURES,
    find_checkpoint_files,
    iter_checkpoint_tensors,
    load_generation_config,
    load_model_config,
)

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}


def save_tiny(folder: Path, arch: str, save_kwargs=None, **overrides):
    """Build a tiny random transformers model, save_pretrained it to ``folder``, return it."""
    config_cls, model_cls = ARCHS[arch]
    torch.manual_seed(0)
    # transformers edits rope dicts in place: hand it a copy.
    model = model_cls(config_cls(**TINY, **copy.deepcopy(overrides))).eval()
    model.save_pretrained(folder, **(save_kwargs or {}))
    return model


def load_all(folder, **kwargs) -> dict[str, torch.Tensor]:
    pairs = list(iter_checkpoint_tensors(folder, progress=False, **kwargs))
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), "a tensor was yielded twice"
    return dict(pairs)


def assert_matches_state_dict(loaded: dict[str, torch.Tensor], model) -> None:
    expected = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")  # tied: the checkpoint stores only embed_tokens
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


# ---- config.json ---------------------------------------------------------------------------

CONFIG_CASES = {
    "llama": ("llama", {}, None),
    "llama-llama3": (
        "llama",
        {
            "rope_parameters": {**LLAMA3_ROPE, "rope_theta": 500000.0},
            "max_position_embeddings": 16384,
        },
        LLAMA3_ROPE,
    ),
    "llama-linear": (
        "llama",
        {"rope_scaling": {"type": "linear", "factor": 2.0}},
        {"rope_type": "linear", "factor": 2.0},
    ),
    "llama-dynamic": (
        "llama",
        {"rope_scaling": {"rope_type": "dynamic", "factor": 3.0}},
        {"rope_type": "dynamic", "factor": 3.0},
    ),
    "llama-yarn": (
        "llama",
        {"rope_scaling": YARN_ROPE, "max_position_embeddings": 16384},
        YARN_ROPE,
    ),
    "llama-bias-tied": (
        "llama",
        {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
        None,
    ),
    "mistral-head_dim-window": ("mistral", {"head_dim": 32, "sliding_window": 256}, None),
    "mistral-no-window": ("mistral", {"sliding_window": None, "eos_token_id": [2, 7]}, None),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}, None),
    "qwen2-window-yarn": (
        "qwen2",
        {
            "use_sliding_window": True,
            "sliding_window": 64,
            "max_window_layers": 1,
            "rope_scaling": YARN_ROPE,
        },
        YARN_ROPE,
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_matches_transformers(tmp_path, case):
    arch, overrides, expected_rope = CONFIG_CASES[case]
    model = save_tiny(tmp_path, arch, **overrides)
    hf = model.config
    cfg = load_model_config(tmp_path)

    assert cfg.architectures == hf.architectures == [f"{type(model).__name__}"]
    assert cfg.architecture == type(model).__name__
    assert cfg.model_type == hf.model_type == arch
    for key in (
        *TINY,
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "pad_token_id",
    ):
        assert getattr(cfg, key) == getattr(hf, key), key
    eos = hf.eos_token_id
    assert cfg.eos_token_id == ([] if eos is None else eos if isinstance(eos, list) else [eos])
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"]
    assert cfg.rope_scaling == expected_rope
    assert cfg.dtype == str(hf.dtype).removeprefix("torch.") == "float32"
    # Shapes and biases of the real transformers modules are the ground truth.
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert cfg.head_dim * cfg.num_attention_heads == attn.q_proj.weight.shape[0]
    assert cfg.head_dim * cfg.num_key_value_heads == attn.k_proj.weight.shape[0]
    assert cfg.qkv_bias == (attn.q_proj.bias is not None) == (attn.v_proj.bias is not None)
    assert cfg.o_proj_bias == (attn.o_proj.bias is not None)
    assert cfg.mlp_bias == (mlp.gate_proj.bias is not None)
    assert cfg.sliding_window == getattr(hf, "sliding_window", None)
    expected_layer_types = (
        getattr(hf, "layer_types", None)
        or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.num_hidden_layers
    )
    assert cfg.layer_types == expected_layer_types


def test_qwen2_window_only_on_layers_past_max_window_layers(tmp_path):
    save_tiny(tmp_path, "qwen2", use_sliding_window=True, sliding_window=64, max_window_layers=1)
    cfg = load_model_config(tmp_path)
    assert (cfg.sliding_window, cfg.layer_types) == (64, ["full_attention", "sliding_attention"])
    save_tiny(tmp_path, "qwen2", use_sliding_window=False, sliding_window=64)
    cfg = load_model_config(tmp_path)
    assert (cfg.sliding_window, cfg.layer_types) == (None, ["full_attention"] * 2)


def test_transformers4_style_config_matches_transformers(tmp_path):
    """Top-level rope_theta / rope_scaling with "type", torch_dtype, head_dim null, eos list."""
    raw = {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        **TINY,
        "head_dim": None,
        "sliding_window": None,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "linear", "factor": 4.0},
        "torch_dtype": "bfloat16",
        "eos_token_id": [2, 32000],
        "bos_token_id": 1,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    cfg = load_model_config(tmp_path)
    assert cfg.head_dim == hf.head_dim == 16
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"] == 1e6
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert hf.rope_parameters["rope_type"] == "linear"
    assert cfg.dtype == cfg.torch_dtype == "bfloat16" and hf.dtype == torch.bfloat16
    assert cfg.eos_token_id == hf.eos_token_id == [2, 32000]
    assert cfg.sliding_window is None and cfg.layer_types == ["full_attention"] * 2
    assert (cfg.rms_norm_eps, cfg.max_position_embeddings) == (1e-5, 32768)


def test_dtype_and_eos_list_from_transformers5_save(tmp_path):
    transformers.LlamaConfig(**TINY, dtype=torch.bfloat16, eos_token_id=[2, 3]).save_pretrained(
        tmp_path
    )
    cfg = load_model_config(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert cfg.dtype == "bfloat16" and cfg.eos_token_id == [2, 3]


def test_generation_config(tmp_path):
    assert load_generation_config(tmp_path) == type(load_generation_config(tmp_path))()
    gen = transformers.GenerationConfig(
        eos_token_id=[1, 9],
        bos_token_id=1,
        temperature=0.6,
        top_p=0.9,
        top_k=20,
        do_sample=True,
        max_new_tokens=77,
        repetition_penalty=1.1,
    )
    gen.save_pretrained(tmp_path)
    got = load_generation_config(tmp_path)
    assert got.eos_token_id == [1, 9] and got.bos_token_id == 1
    assert (got.temperature, got.top_p, got.top_k) == (0.6, 0.9, 20)
    assert (got.do_sample, got.max_new_tokens, got.repetition_penalty) == (True, 77, 1.1)
    transformers.GenerationConfig(eos_token_id=5).save_pretrained(tmp_path)
    got = load_generation_config(tmp_path)
    assert got.eos_token_id == [5] and got.temperature is None and got.top_k is None


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model_config(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="does not exist"):
        find_checkpoint_files(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=r"config\.json not found"):
        load_model_config(tmp_path)


def test_garbage_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "hidden_size": 64,\n  oops\n}')
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON .*line 3, column 3"):
        load_model_config(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({**TINY, "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel") as err:
        load_model_config(tmp_path)
    assert all(arch in str(err.value) for arch in SUPPORTED_ARCHITECTURES)


def test_non_silu_activation_refused(tmp_path):
    save_tiny(tmp_path, "llama", hidden_act="gelu")
    with pytest.raises(ModelLoadError, match="hidden_act='gelu'"):
        load_model_config(tmp_path)


# ---- tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tensors_equal_state_dict(tmp_path, arch):
    model = save_tiny(tmp_path, arch, tie_word_embeddings=arch == "qwen2")
    assert find_checkpoint_files(tmp_path).files == [tmp_path / "model.safetensors"]
    assert_matches_state_dict(load_all(tmp_path), model)


def test_sharded_safetensors(tmp_path):
    model = save_tiny(tmp_path, "llama", save_kwargs={"max_shard_size": "20KB"})
    files = find_checkpoint_files(tmp_path)
    assert files.index_file == tmp_path / "model.safetensors.index.json"
    assert len(files.files) > 3
    assert_matches_state_dict(load_all(files), model)


def test_names_filter_reads_only_selected(tmp_path):
    model = save_tiny(tmp_path, "mistral", save_kwargs={"max_shard_size": "20KB"})
    wanted = {"model.norm.weight", "model.layers.1.mlp.up_proj.weight"}
    for names_filter in (wanted, lambda name: name in wanted):
        loaded = load_all(tmp_path, names_filter=names_filter)
        assert set(loaded) == wanted
        assert all(torch.equal(loaded[n], model.state_dict()[n]) for n in wanted)


def save_bin(folder: Path, model, shards: int = 1) -> None:
    """Write the model as transformers 4 did with safe_serialization=False (tied lm_head dropped)."""
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not (model.config.tie_word_embeddings and k == "lm_head.weight")
    }
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names, weight_map = list(state), {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: state[n] for n in names[i::shards]}, folder / shard)
        weight_map.update({n: shard for n in names[i::shards]})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 3])
def test_bin_checkpoint_loads_through_weights_only(tmp_path, shards):
    model = save_tiny(tmp_path, "qwen2", tie_word_embeddings=True)
    (tmp_path / "model.safetensors").unlink()
    save_bin(tmp_path, model, shards)
    files = find_checkpoint_files(tmp_path)
    assert files.format == "bin" and len(files.files) == shards
    assert_matches_state_dict(load_all(tmp_path), model)


def test_legacy_non_zip_bin_falls_back_from_mmap(tmp_path):
    state = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = load_all(tmp_path)
    assert set(loaded) == {"w", "step"} and torch.equal(loaded["w"], state["w"])


class EvilDict(collections.OrderedDict):
    """A dict subclass: weights_only must refuse to construct it."""


def test_bin_with_arbitrary_objects_refused(tmp_path):
    torch.save(EvilDict(w=torch.ones(2)), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="arbitrary Python objects.*safetensors") as err:
        load_all(tmp_path)
    assert "pytorch_model.bin" in str(err.value)


def test_corrupt_bin(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip archive" * 10)
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.*download it again"):
        load_all(tmp_path)


def test_bin_index_tensor_missing_from_shard(tmp_path):
    model = save_tiny(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    save_bin(tmp_path, model, shards=2)
    index_path = tmp_path / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.ghost.weight"] = "pytorch_model-00002-of-00002.bin"
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        ModelLoadError, match="model.ghost.weight.*pytorch_model-00002-of-00002.bin"
    ):
        load_all(tmp_path)


def test_dtype_cast_only_floating(tmp_path):
    model = save_tiny(tmp_path, "llama")
    loaded = load_all(tmp_path, dtype=torch.bfloat16)
    for name, tensor in model.state_dict().items():
        assert loaded[name].dtype == torch.bfloat16
        assert torch.equal(loaded[name], tensor.to(torch.bfloat16)), name
    ints = tmp_path / "ints"
    ints.mkdir()
    save_file({"ids": torch.arange(5), "w": torch.ones(3)}, ints / "model.safetensors")
    loaded = load_all(ints, dtype="float16")
    assert loaded["ids"].dtype == torch.int64 and torch.equal(loaded["ids"], torch.arange(5))
    assert loaded["w"].dtype == torch.float16


# ---- broken folders ------------------------------------------------------------------------


def test_no_weight_files_lists_accepted_kinds(tmp_path):
    save_tiny(tmp_path, "llama")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match=r"no weight files.*model\.safetensors.*pytorch_model\.bin"
    ):
        find_checkpoint_files(tmp_path)


def test_truncated_safetensors_named(tmp_path):
    save_tiny(tmp_path, "llama")
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated.*download it again"):
        find_checkpoint_files(tmp_path)


def test_garbage_safetensors_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    )
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a valid safetensors"):
        find_checkpoint_files(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is not a valid safetensors"):
        find_checkpoint_files(tmp_path)


def test_safetensors_error_while_reading_becomes_model_load_error(tmp_path):
    """A header that passes our checks but that safetensors rejects (a gap between tensors)."""
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
        }
    ).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(20)
    (tmp_path / "model.safetensors").write_bytes(blob)
    assert find_checkpoint_files(tmp_path).weight_map is not None
    with pytest.raises(
        ModelLoadError, match=r"cannot read .*model\.safetensors.*download it again"
    ):
        load_all(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(blob + b"junk")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors has trailing bytes"):
        find_checkpoint_files(tmp_path)


def test_missing_shard_named(tmp_path):
    save_tiny(tmp_path, "llama", save_kwargs={"max_shard_size": "20KB"})
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"shard {shard.name} .*missing"):
        find_checkpoint_files(tmp_path)


def test_index_tensor_missing_from_its_shard(tmp_path):
    save_tiny(tmp_path, "llama", save_kwargs={"max_shard_size": "20KB"})
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in index["weight_map"].values() if s != shard)
    index["weight_map"][name] = other  # the index now points at the wrong shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=f"{re.escape(name)}.*{other}.*does not contain it"):
        find_checkpoint_files(tmp_path)


# ---- streaming / memory --------------------------------------------------------------------


def big_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """A ~40 MB fp32 checkpoint of 10 tensors of 4 MB."""
    torch.manual_seed(0)
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024) for i in range(10)}
    save_file(tensors, folder / "model.safetensors")
    return tensors


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_loader_holds_one_tensor_at_a_time(tmp_path, fmt):
    """Generator contract: once the consumer drops a tensor, nothing in the loader keeps it."""
    model = save_tiny(tmp_path, "llama", save_kwargs={"max_shard_size": "20KB"})
    if fmt == "bin":
        for path in tmp_path.glob("model*.safetensors*"):
            path.unlink()
        save_bin(tmp_path, model, shards=2)
    refs: list[weakref.ref] = []
    max_alive = 0
    for _, tensor in iter_checkpoint_tensors(tmp_path, progress=False):
        refs.append(weakref.ref(tensor))
        del tensor  # CPython frees it here unless something else still refers to it
        max_alive = max(max_alive, sum(r() is not None for r in refs[:-1]))
    assert len(refs) > 10 and max_alive == 0


def _rss_anon_mb() -> float:
    # Anonymous memory only: the memory-mapped file's pages are page cache, not our heap.
    match = re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc RssAnon")
def test_peak_memory_far_below_twice_the_weights(tmp_path):
    source = big_checkpoint(tmp_path)
    expected = {name: t.to(torch.float16) for name, t in source.items()}
    del source
    gc.collect()
    before = _rss_anon_mb()
    kept, peak = {}, 0.0
    for name, tensor in iter_checkpoint_tensors(tmp_path, dtype=torch.float16, progress=False):
        kept[name] = tensor  # like a model: keep every converted tensor
        peak = max(peak, _rss_anon_mb() - before)
    assert all(torch.equal(kept[n], expected[n]) for n in expected)
    # fp16 weights are 20 MB; materializing the fp32 state dict first would need 60 MB.
    assert peak < 30, f"peak anonymous memory grew by {peak:.1f} MB for 40 MB of fp32 weights"


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    class FakeTerminal:
        def __init__(self):
            self.chunks: list[str] = []

        def write(self, text):
            self.chunks.append(text)
            return len(text)

        def flush(self):
            pass

        def isatty(self):
            return True

    model = save_tiny(tmp_path, "mistral")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert_matches_state_dict(dict(iter_checkpoint_tensors(tmp_path)), model)
    assert "Loading weights" in "".join(terminal.chunks)
    terminal.chunks.clear()
    dict(iter_checkpoint_tensors(tmp_path, progress=False))
    assert terminal.chunks == []
