"""``minerva bench latency | consistency --backend minerva,llamacpp`` in one process on the demo
model (llama.cpp where installed; the folder converted to F16 GGUF in a temp cache): a row per
engine with the usage and energy fields, a chart per metric, and a consistency report whose
token-distribution and coherence figures follow from the tokens it compared."""

from __future__ import annotations

import json
import math

import pytest

from minerva.bench.coherence import coherence
from minerva.bench.drivers import load_driver
from minerva.bench.token_distribution import compare
from minerva.bench.workloads import build_workload
from minerva.cli import main
from minerva.demo import demo_model_path
from minerva.tokenizer import Tokenizer

pytest.importorskip("llama_cpp")
COMMON = ["--model", "demo", "--backend", "minerva,llamacpp", "--device", "cpu",
          "--num-threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def gguf_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_latency_rows_and_charts_for_both_engines(tmp_path):
    args = ["bench", "latency", *COMMON, "--input-len", "8", "--output-len", "4",
            "--repeats", "1", "--warmup", "0", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["minerva", "llamacpp"]
    assert rows[0]["decode_tok_s"] > 0
    for r in rows:  # llama.cpp's tokens come through a reader thread: on a busy machine all 4
        # can reach the bench at once, which leaves no decode span (None), never a made-up rate
        assert (r["decode_tok_s"] is None or r["decode_tok_s"] > 0) and r["cpu_percent"] is not None
        energy = r["energy"]
        assert {energy["cpu_source"], energy["gpu_source"]} <= {"rapl", "nvml", "not available"}
        assert (energy["energy_j"] is None) == (r["energy_per_token_j"] is None)
    for metric in ("ttft_ms", "tpot_ms", "decode_tok_s", "peak_rss_bytes"):
        assert (tmp_path / f"latency_{metric}.png").stat().st_size > 1000


def test_consistency_reports_distributions_and_coherence(tmp_path):
    args = ["bench", "consistency", *COMMON, "--dtype", "float32", "--num-prompts", "3",
            "--max-tokens", "12", "--reference-backend", "minerva",
            "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    (pair,) = doc["results"]
    assert (pair["a"], pair["b"], pair["unit"]) == ("minerva", "llamacpp", "tokens")
    firsts = [p["first_divergence"] for p in pair["per_prompt"]]
    assert pair["num_diverged"] == sum(f is not None for f in firsts)
    assert doc["reference"] == {"backend": "minerva", "model": str(demo_model_path()),
                                "dtype": "float32"}  # fmt: skip
    # Recompute the figures from the texts the report holds, with the reference model.
    tok = Tokenizer.from_folder(demo_model_path())
    outs = {
        k: [tok.encode(t, add_special_tokens=False) for t in v] for k, v in pair["outputs"].items()
    }
    assert compare(outs["a"], outs["b"]) == pytest.approx(
        {k: pair[k] for k in ("top_k_overlap", "kl_divergence")}
    )
    requests = build_workload("standard", 3, 0, 12)
    prompts = [tok.encode(r.prompt) for r in requests]
    ref = load_driver("minerva", str(demo_model_path()), device="cpu", dtype="float32")
    try:
        for engine, side in zip(doc["engines"], ("a", "b")):
            expected = coherence(ref.token_logprobs, prompts, outs[side])["coherence_ppl"]
            assert engine["coherence_ppl"] == pytest.approx(expected, rel=1e-4)
            assert 1 < engine["coherence_ppl"] < math.inf
    finally:
        ref.close()
    assert (tmp_path / "coherence.png").is_file()
