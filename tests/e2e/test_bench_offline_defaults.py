"""Offline benchmarks on a plain install and on the demo model: the default backends are the
installed ones, a missing optional engine is skipped without losing rows, and `consistency`
runs both engines with the same explicit greedy settings (the demo model's
generation_config.json sets repetition_penalty 1.1, which must not reach either)."""

from __future__ import annotations

import json
import sys

import pytest

from minerva.cli import main

LATENCY = ["bench", "latency", "--model", "demo", "--input-len", "8", "--output-len", "4",
           "--repeats", "1", "--warmup", "0", "--device", "cpu", "--no-progress"]  # fmt: skip


def test_latency_defaults_to_the_installed_backends(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # a plain install: no transformers
    assert main([*LATENCY, "--output", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["minerva"]
    assert rows[0]["decode_tok_s"] > 0
    assert "warning" not in capsys.readouterr().err  # nothing was asked for that is missing


def test_a_missing_backend_is_skipped_and_the_rows_are_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)
    args = [*LATENCY, "--backend", "minerva,transformers", "--output", str(tmp_path)]
    assert main(args) == 0
    assert "skipped transformers" in capsys.readouterr().err
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["minerva"]


def test_a_failure_after_the_first_backend_writes_its_rows(tmp_path, monkeypatch):
    from minerva.bench import offline

    real, calls = offline.run_latency, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(offline, "run_latency", second_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        main([*LATENCY, "--backend", "minerva,minerva", "--dtype", "float32,auto",
              "--output", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(rows) == 1 and rows[0]["dtype"] == "float32"


def test_consistency_demo_vs_transformers_agrees_exactly(tmp_path):
    pytest.importorskip("transformers")
    args = ["bench", "consistency", "--backend", "minerva,transformers", "--model", "demo",
            "--num-prompts", "4", "--max-tokens", "24", "--device", "cpu", "--dtype", "float32",
            "--no-progress", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    [row] = doc["results"]
    assert row["unit"] == "tokens"
    assert row["token_agreement"] == 1.0 and row["exact_match"] == 1.0
    sampling = doc["config"]["sampling (offline backends)"]
    assert sampling["temperature"] == 0 and sampling["repetition_penalty"] == 1.0
    assert "repetition_penalty" in (tmp_path / "report.md").read_text()
