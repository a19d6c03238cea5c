"""`minerva doctor` on the CPU: its model figures against the checkpoint and config.json read
independently, the advice it derives, the CLI's JSON and its error path."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from minerva import doctor
from minerva.cli import main
from minerva.config import load_config
from minerva.demo import demo_model_path

MIB = 2**20


def _config(**overrides):
    return load_config(None, {"device": "cpu", **overrides}, env={})[0]


def test_model_figures_match_the_checkpoint():
    folder = demo_model_path()
    cfg = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        numel = sum(_numel(f, k) for k in f.keys())
    report = doctor.collect(_config(dtype="bfloat16", kv_cache_memory="64MiB"))
    fit, bandwidth = report["model"], report["device"]["bandwidth_gb_s"]
    assert fit["dtype"] == "bfloat16"
    assert fit["weight_gib"] * 2**30 == numel * 2  # tied embeddings: stored once, read once
    per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    assert fit["kv_bytes_per_token"] == per_token
    assert fit["kv_tokens"] == 64 * MIB // per_token
    assert fit["max_model_len"] == cfg["max_position_embeddings"] and fit["fits"]
    assert bandwidth > 0.5  # GB/s: any machine that runs the suite reads faster than this
    assert fit["decode_ceiling_tok_s"] == pytest.approx(bandwidth * 1e9 / (numel * 2))
    assert any(f"{fit['kv_tokens']:,} tokens" in line for line in report["advice"])


def _numel(f, key: str) -> int:
    n = 1
    for d in f.get_slice(key).get_shape():
        n *= d
    return n


def test_advice_follows_the_findings():
    fp32 = doctor.collect(_config(dtype="float32"))
    assert any("dtype=bfloat16 halves" in line for line in fp32["advice"])
    bf16 = doctor.collect(_config(dtype="bfloat16"))
    assert not any("dtype=bfloat16 halves" in line for line in bf16["advice"])
    tiny = doctor.collect(_config(memory_fraction=1e-6))
    assert not tiny["model"]["fits"]
    assert any("do not fit" in line for line in tiny["advice"])
    report = doctor.collect(_config(), with_model=False)
    report["device"]["cpu"] |= {"c_kernels": False, "c_kernels_problem": "no C compiler found"}
    assert any("install a C compiler" in line for line in doctor.advice(report))
    labels = [label for label, _ in doctor.rows(report)]
    assert "C kernels" in labels and "model" not in labels


def test_empty_triton_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    assert doctor.triton_cache_files() == (str(tmp_path / "cache"), 0)
    (tmp_path / "cache" / "ab").mkdir(parents=True)
    for name in ("k.cubin", "k.json"):
        (tmp_path / "cache" / "ab" / name).write_text("x")
    assert doctor.triton_cache_files()[1] == 2
    report = doctor.collect(_config(), with_model=False)
    gpu = {"name": "G", "compute_capability": "9.0", "sms": 132, "memory_free_gib": 70.0}
    gpu |= {"memory_total_gib": 80.0, "triton_kernels": True, "pdl": True, "bf16": True}
    report["device"]["gpu"] = gpu | {"triton_cache": {"path": "/c", "files": 0}}
    assert any("kernel cache (/c) is empty" in line for line in doctor.advice(report))
    rows = dict(doctor.rows(report))
    assert rows["chosen GPU"] == "G (sm_90, 132 SMs), 70.0 of 80.0 GiB free"
    assert rows["Triton kernel cache"] == "0 files in /c"
    report["device"]["gpu"]["triton_cache"]["files"] = 7
    assert not any("kernel cache" in line for line in doctor.advice(report))


def test_cli_json_and_errors(capsys, tmp_path):
    assert main(["doctor", "--json", "--device", "cpu", "--no-model"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"]["kind"] == "cpu" and "model" not in report
    assert main(["doctor", "--device", "cpu", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "--model" in err


def test_quantized_weights_are_counted_as_stored(tmp_path):
    """A Q8_0 GGUF and a folder quantized to Q8_0 while loading: the embedding stays in blocks,
    and the tied head keeps its own copy of them (in its interleaved layout on the CPU)."""
    pytest.importorskip("gguf")
    import torch

    from minerva.loader.checkpoint import iter_checkpoint_tensors
    from minerva.loader.gguf_export import write_gguf
    from minerva.loader.hf_config import load_model_config
    from minerva.quant.gguf_quantize import quantize_tensor
    from minerva.quant.gguf_types import GGMLType

    folder = demo_model_path()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        sizes = {k: _numel(f, k) for k in f.keys()}
    embed = sizes["model.embed_tokens.weight"]
    vectors = sum(n for k, n in sizes.items() if "norm" in k)
    matrices = sum(sizes.values()) - vectors - embed
    path = tmp_path / "demo-q8_0.gguf"
    tensors = iter_checkpoint_tensors(folder, "cpu", torch.float32, progress=False)
    plan = lambda name, shape: GGMLType.Q8_0  # noqa: E731
    write_gguf(load_model_config(folder), tensors, path, plan, quantize_tensor, file_type="q8_0")
    q8 = 34 / 32  # bytes per weight of Q8_0 blocks
    expected = (matrices + 2 * embed) * q8 + vectors * 4  # blocks (embedding and head), norms
    for overrides in ({"model": str(path)}, {"quantization": "Q8_0"}):
        report = doctor.collect(_config(dtype="float32", kv_cache_memory="64MiB", **overrides))
        fit = report["model"]
        assert fit["quantization"].lower() == "q8_0"
        assert fit["weight_gib"] * 2**30 == expected


def test_a_profile_is_recommended_for_the_machine_and_model():
    report = doctor.collect(_config(max_num_seqs=8))
    rec = report["recommendation"]
    seqs = report["model"]["kv_tokens"] // report["model"]["max_model_len"]
    assert rec["profile"] == ("low-latency" if seqs >= 4 else "memory-constrained")
    assert report["advice"][0].startswith(f"recommended: --profile {rec['profile']}")
    tiny = doctor.collect(_config(memory_fraction=1e-6))
    assert tiny["recommendation"]["profile"] == "memory-constrained"
    assert tiny["recommendation"]["settings"]["quantization"] == "q4_k_m"
    gpu = {**report, "device": {**report["device"], "kind": "cuda"}}
    gpu["model"] = {**report["model"], "kv_tokens": 100 * report["model"]["max_model_len"]}
    rec = doctor.recommend(gpu)
    assert rec["profile"] == "high-throughput" and rec["settings"]["max_num_seqs"] == 100
    load_config(None, rec["settings"], env={})  # the settings load as they are
