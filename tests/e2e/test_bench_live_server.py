"""`minerva bench serve` against a live `minerva serve` on a tiny random model, OpenAI and Ollama
APIs side by side: token counts equal the server's usage (and the tokenizer), TTFT <= E2E for
every request, the streamed text is the engine's greedy text, and every output file parses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("minerva.server")
pytest.importorskip("matplotlib")

from minerva import LLM, SamplingParams  # noqa: E402
from minerva.bench.workloads import build_workload  # noqa: E402
from minerva.tokenizer import Tokenizer  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.tiny_models import build_tiny_text_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    "OMP_NUM_THREADS": "1",
}
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory) -> Path:
    return build_tiny_text_model(tmp_path_factory.mktemp("bench_live_model"), seed=3)


@pytest.fixture(scope="module")
def live_server(bench_model, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("logs") / "serve.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minerva.cli",
            "serve",
            "--model",
            str(bench_model),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--num-threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"minerva serve exited:\n{Path(log.name).read_text()}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "minerva serve did not become healthy"
        time.sleep(0.1)
    yield url, proc.pid
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_bench_serve_against_minerva_serve_both_apis(bench_model, live_server, tmp_path):
    url, pid = live_server
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "minerva.cli",
        "bench",
        "serve",
        "--target",
        f"openai={url},api=openai,pid={pid}",
        "--target",
        f"ollama={url},api=ollama-chat",
        "--workload",
        "standard",
        "--max-tokens",
        str(MAX_TOKENS),
        "--ignore-eos",
        "--concurrency",
        "1,2",
        "--num-prompts",
        "4",
        "--warmup",
        "1",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    tok = Tokenizer.from_folder(bench_model)
    prompts = build_workload("standard", 4)
    requests = data["requests"]
    assert len(requests) == 2 * 2 * 4
    for r in requests:
        assert r["success"], r["error"]
        assert 0 < r["ttft"] <= r["e2e"] and r["usage_reported"]
        assert r["chunk_times"] == sorted(r["chunk_times"])
        assert 1 <= len(r["chunk_times"]) <= r["output_tokens"]
        prompt = prompts[r["index"]]
        if r["target"] == "openai":
            # Usage counts are the server's; check them against the tokenizer and ignore_eos.
            assert r["output_tokens"] == MAX_TOKENS
            assert r["prompt_tokens"] == len(tok.encode(prompt.prompt))
        else:
            assert 1 <= r["output_tokens"] <= MAX_TOKENS  # Ollama has no ignore_eos
            assert r["prompt_tokens"] == len(tok.encode_chat(prompt.chat_messages()))
    # The streamed pieces add up to the engine's own greedy text.
    llm = LLM(model=str(bench_model), device="cpu", dtype="float32", progress=False)
    greedy = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    expected = [o.text for o in llm.generate([p.prompt for p in prompts], greedy)]
    for r in requests:
        if r["target"] == "openai":
            assert r["output_text"] == expected[r["index"]]
    summaries = {(s["target"], s["level"]): s for s in data["summaries"]}
    assert set(summaries) == {(t, lv) for t in ("openai", "ollama") for lv in ("c=1", "c=2")}
    for s in summaries.values():
        assert s["completed"] == 4 and s["failed"] == 0
        assert s["peak_rss_bytes"] > 50 * 2**20  # the server process (torch + model)
    assert summaries["openai", "c=1"]["total_output_tokens"] == 4 * MAX_TOKENS
    assert data["targets"][0]["pid"] == pid
    if sys.platform.startswith("linux"):
        assert data["targets"][1]["pid"] == pid  # found from the listening port
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(out / "requests.csv") as f:
        assert len(list(csv.DictReader(f))) == 16
    md = (out / "report.md").read_text()
    assert "## Ratios to openai" in md and "| ollama | c=2 |" in md
    from matplotlib.image import imread

    for png in ("throughput.png", "latency.png", "ttft_cdf.png", "itl_cdf.png"):
        assert imread(out / png).ndim == 3
