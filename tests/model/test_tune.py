"""``minerva tune`` on the demo model with a tiny grid: the table has every point, and the file
it writes passes ``config check`` and loads to the best point's settings (no timings asserted)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from minerva.cli import main
from minerva.config import check_config_file, load_config
from minerva.tune import best_row, combine_rounds, within_noise


def test_tune_writes_a_config_that_config_check_accepts(tmp_path, capsys, monkeypatch):
    for var in list(os.environ):
        if var.startswith(("MINERVA_", "MISTRAL")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "tuned.toml"
    argv = [
        "tune", "--goal", "throughput", "--device", "cpu", "--max-num-seqs", "2,4",
        "--max-num-batched-tokens", "64", "--input-len", "8", "--output-len", "4",
        "--num-prompts", "4", "--memory-limit", "2G", "--output", str(out), "--rounds", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "max_num_seqs" in printed and f"wrote {out}" in printed
    assert check_config_file(str(out)) == []
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["max_num_seqs"], r["max_num_batched_tokens"]) for r in rows] == [(2, 64), (4, 64)]
    for r in rows:  # two rounds each; the figure is one of them, inside their range
        assert len(r["rounds"]) == 2 and r["output_throughput"] in r["rounds"]
        assert r["spread"] == [min(r["rounds"]), max(r["rounds"])]
    best = max(rows, key=lambda r: r["output_throughput"])
    cfg, sources = load_config(str(out), env={})
    assert cfg.scheduler.max_num_seqs == best["max_num_seqs"]
    assert (cfg.cache.memory_limit, cfg.device.device) == (2 * 2**30, "cpu")
    assert sources["max_num_seqs"] == f"file:{out}"
    assert main(["config", "check", str(out)]) == 0
    capsys.readouterr()
    again = ["tune", "--goal", "throughput", "--config", str(out), "--input-len", "8",
             "--output-len", "4", "--num-prompts", "4", "--rounds", "2"]  # fmt: skip
    assert main(again) == 0  # the file's settings measured again, beside its recorded figure
    said = capsys.readouterr().out
    assert "output tokens/s now (the file's run: " in said
    assert re.search(r"; [+-][0-9.]+%, (within|outside) its noise\)", said), said


def test_tune_rejects_a_bad_grid_before_loading(capsys):
    assert main(["tune", "--block-size", "16,24"]) == 1
    assert "--block-size '24': must be a power of two" in capsys.readouterr().err


def test_rounds_combine_to_the_median_round_and_noise_is_range_overlap():
    runs = [{"max_num_seqs": 8, "output_throughput": v, "e2e_ms": 1.0} for v in (5.0, 9.0, 7.0)]
    row = combine_rounds(runs, "throughput")
    assert (row["output_throughput"], row["rounds"], row["spread"]) == (7.0, [5.0, 9.0, 7.0],
                                                                         [5.0, 9.0])  # fmt: skip
    even = combine_rounds(runs[:2], "throughput")  # a measured round, not the mean of two
    assert even["output_throughput"] == 5.0
    skipped = combine_rounds([runs[0], {"max_num_seqs": 8, "skipped": "no room"}], "throughput")
    assert skipped["skipped"] == "no room" and best_row([skipped], "throughput") is None
    assert within_noise({"spread": [5, 9]}, {"spread": [8.5, 12]})
    assert within_noise({"spread": [5, 9]}, {"spread": [9, 9]})  # touching ranges agree
    assert not within_noise({"spread": [5, 9]}, {"spread": [9.5, 12]})
    assert not within_noise({"spread": [10, 12]}, {"spread": [5, 9]})
    lat = [{"e2e_ms": v} for v in (30.0, 10.0, 20.0)]
    assert best_row([combine_rounds(lat, "latency"), {"e2e_ms": 15.0}], "latency")["e2e_ms"] == 15.0


def test_tune_rejects_zero_rounds(capsys):
    assert main(["tune", "--rounds", "0"]) == 1
    assert "--rounds must be at least 1" in capsys.readouterr().err


def test_tune_with_random_weights_needs_only_a_config(tmp_path, capsys, monkeypatch):
    """--load-format dummy (the GPU script's 7B shapes): a folder with only config.json is
    measured, and the written file keeps load_format so --config measures the same thing."""
    for var in list(os.environ):
        if var.startswith(("MINERVA_", "MISTRAL")):
            monkeypatch.delenv(var)
    folder = tmp_path / "shape"
    folder.mkdir()
    (folder / "config.json").write_text(
        (Path(__file__).parents[2] / "src/minerva/demo_model/config.json").read_text()
    )
    out = tmp_path / "dummy.toml"
    argv = ["tune", "--model", str(folder), "--load-format", "dummy", "--device", "cpu",
            "--max-num-seqs", "2", "--input-len", "8", "--output-len", "4", "--num-prompts",
            "2", "--rounds", "1", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    cfg, sources = load_config(str(out), env={})
    assert cfg.model.load_format == "dummy" and cfg.model.model == str(folder)
    assert check_config_file(str(out)) == []
    capsys.readouterr()
    assert main(["tune", "--config", str(out), "--input-len", "8", "--output-len", "4",
                 "--num-prompts", "2", "--rounds", "1"]) == 0  # fmt: skip
    assert re.search(
        r"now \(the file.s run: .*; [+-][0-9.]+%, (within|outside) its noise\)",
        capsys.readouterr().out,
    )
