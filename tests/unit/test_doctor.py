"""`minerva doctor` on the CPU: its model figures against the checkpoint and config.json read
independently, the advice it derives, the CLI's JSON and its error path."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from minerva import doctor
from minerva.cli import main
from minerva.config_sources import load_config
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


def test_cli_json_and_errors(capsys, tmp_path):
    assert main(["doctor", "--json", "--device", "cpu", "--no-model"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"]["kind"] == "cpu" and "model" not in report
    assert main(["doctor", "--device", "cpu", "--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "--model" in err
