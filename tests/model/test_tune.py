"""``minerva tune`` on the demo model with a tiny grid: the table has every point, and the file
it writes passes ``config check`` and loads to the best point's settings (no timings asserted)."""

from __future__ import annotations

import json
import os

from minerva.cli import main
from minerva.config import check_config_file, load_config


def test_tune_writes_a_config_that_config_check_accepts(tmp_path, capsys, monkeypatch):
    for var in list(os.environ):
        if var.startswith(("MINERVA_", "MISTRAL")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "tuned.toml"
    argv = [
        "tune", "--goal", "throughput", "--device", "cpu", "--max-num-seqs", "2,4",
        "--max-num-batched-tokens", "64", "--input-len", "8", "--output-len", "4",
        "--num-prompts", "4", "--memory-limit", "2G", "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "max_num_seqs" in printed and f"wrote {out}" in printed
    assert check_config_file(str(out)) == []
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["max_num_seqs"], r["max_num_batched_tokens"]) for r in rows] == [(2, 64), (4, 64)]
    best = max(rows, key=lambda r: r["output_throughput"])
    cfg, sources = load_config(str(out), env={})
    assert cfg.scheduler.max_num_seqs == best["max_num_seqs"]
    assert (cfg.cache.memory_limit, cfg.device.device) == (2 * 2**30, "cpu")
    assert sources["max_num_seqs"] == f"file:{out}"
    assert main(["config", "check", str(out)]) == 0
    capsys.readouterr()
    again = ["tune", "--goal", "throughput", "--config", str(out), "--input-len", "8",
             "--output-len", "4", "--num-prompts", "4"]  # fmt: skip
    assert main(again) == 0  # the file's settings measured again, beside its recorded figure
    assert "output tokens/s now (the file's run: " in capsys.readouterr().out


def test_tune_rejects_a_bad_grid_before_loading(capsys):
    assert main(["tune", "--block-size", "16,24"]) == 1
    assert "--block-size '24': must be a power of two" in capsys.readouterr().err
