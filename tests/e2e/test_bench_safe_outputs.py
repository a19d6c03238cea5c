"""`minerva bench serve` never loses what it measured and never writes a secret: unbounded rates
without a cap, a missing matplotlib, a plot that crashes, a failure mid-run; API keys masked
in every artefact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minerva.bench import load
from minerva.bench.redact import Redactor
from minerva.cli import main
from tests.bench_fake_server import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
SECRET_FLAG, SECRET_TARGET = "sk-flag-0123456789abcdef", "sk-target-fedcba9876543210"


@pytest.fixture
def server():
    srv = FakeLLMServer(ttft_ms=2, itl_ms=1).start()
    yield srv
    srv.stop()


def serve_args(server, out: Path, *extra: str) -> list[str]:
    return [
        "bench", "serve", "--target", f"a={server.url}", "--max-tokens", "3",
        "--num-prompts", "3", "--warmup", "0", "--no-progress", "--output", str(out), *extra,
    ]  # fmt: skip


def test_unbounded_rate_without_a_cap_writes_everything(server, tmp_path):
    assert main(serve_args(server, tmp_path, "--request-rate", "4,inf")) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["level"] for s in data["summaries"]] == ["rate=4", "rate=inf"]
    assert all(s["completed"] == 3 for s in data["summaries"])
    for png in ("throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_without_matplotlib_the_summary_is_written_and_the_exit_is_clean(
    server, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(serve_args(server, tmp_path)) == 0
    captured = capsys.readouterr()
    assert "warning: no plots" in captured.err and "matplotlib" in captured.err
    assert "TTFT p50" in captured.out
    assert (tmp_path / "results.json").exists() and (tmp_path / "report.md").exists()
    assert not list(tmp_path.glob("*.png"))


def test_a_crashing_plot_keeps_the_results(server, tmp_path, monkeypatch, capsys):
    from minerva.bench import plots

    def crash(*args, **kwargs):
        raise RuntimeError("plot blew up")

    monkeypatch.setattr(plots, "plot_latency", crash)
    assert main(serve_args(server, tmp_path)) == 1
    assert "plot blew up" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["summaries"][0]["completed"] == 3


def test_a_failure_mid_run_keeps_the_runs_that_finished(server, tmp_path, monkeypatch):
    real, calls = load.run_level, []

    async def second_level_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the network went away")
        return await real(*args, **kwargs)

    monkeypatch.setattr(load, "run_level", second_level_fails)
    with pytest.raises(RuntimeError, match="network went away"):
        main(serve_args(server, tmp_path, "--concurrency", "1,2"))
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["level"] for s in data["summaries"]] == ["c=1"]


def test_secrets_are_masked_in_every_artefact(server, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [
        sys.executable, "-m", "minerva.cli", "bench", "serve",
        "--target", f"a={server.url},key={SECRET_TARGET}", "--target", f"b={server.url}",
        "--api-key", SECRET_FLAG, "--max-tokens", "3", "--num-prompts", "2", "--warmup", "0",
        "--no-progress", "--output", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    command = json.loads((out / "results.json").read_text())["command"]
    assert "--api-key ***" in command and "key=***" in command
    texts = [proc.stdout, proc.stderr] + [
        p.read_text(errors="replace") for p in out.iterdir() if p.suffix in (".json", ".md", ".csv")
    ]
    for text in texts:
        assert SECRET_FLAG not in text and SECRET_TARGET not in text
    # A user error that echoes the --target spec masks its key too.
    bad = subprocess.run(
        [*cmd[:5], "--target", f"x={server.url},key={SECRET_TARGET},bogus=1"],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1 and "bogus" in bad.stderr and SECRET_TARGET not in bad.stderr


def test_redactor_masks_headers_and_known_values():
    r = Redactor(["abc123secret"])
    assert r.text("Authorization: Bearer tok-1") == "Authorization: Bearer ***"
    assert r.text("failed: abc123secret rejected") == "failed: *** rejected"
    assert r.argv(["--api-key", "k1", "--target", "a=http://h,key=k2,api=ollama"]) == [
        "--api-key", "***", "--target", "a=http://h,key=***,api=ollama",
    ]  # fmt: skip
    assert r.value({"x": ["--api-key=zz"]}) == {"x": ["--api-key=***"]}
