"""Offline benchmarks on a tiny random Llama for both backends (minerva, transformers): complete
results, the same greedy tokens and perplexities from both, and the CLI commands' files."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from minerva.bench.consistency import compare_all
from minerva.bench.drivers import load_driver
from minerva.bench.offline import run_latency, run_throughput
from minerva.bench.perplexity import perplexity
from minerva.bench.workloads import build_workload
from minerva.cli import main
from minerva.errors import ConfigError
from minerva.tokenizer import Tokenizer
from tests.tiny_models import build_tiny_text_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_text_model(tmp_path_factory.mktemp("bench_model"), seed=5)


@pytest.fixture(scope="module")
def backends(model_dir):
    loaded = {
        name: load_driver(name, str(model_dir), device="cpu", dtype="float32", num_threads=1)
        for name in ("minerva", "transformers")
    }
    yield loaded
    for b in loaded.values():
        b.close()


def test_latency_results_are_complete_and_consistent(backends):
    prompt = build_workload("fixed:in=24,out=6", 1, vocab_size=500)[0].prompt_token_ids
    rows = {name: run_latency(b, prompt, 6, repeats=2, warmup=1) for name, b in backends.items()}
    for name, r in rows.items():
        assert r["backend"] == name and (r["prompt_len"], r["output_len"]) == (24, 6)
        assert len(r["runs"]) == 2
        assert 0 < r["ttft_ms"] <= r["e2e_ms"]
        assert r["prefill_tok_s"] == pytest.approx(24 / (r["ttft_ms"] / 1e3))
        assert r["decode_tok_s"] > 0 and r["tpot_ms"] == pytest.approx(1e3 / r["decode_tok_s"])
        assert r["bandwidth_gb_s"] == pytest.approx(r["weight_bytes"] * r["decode_tok_s"] / 1e9)
        assert r["peak_rss_bytes"] > 10 * 2**20 and r["peak_gpu_bytes"] is None
        for run in r["runs"]:  # decode covers tokens 2..6, after the first
            assert run["e2e_s"] - run["ttft_s"] == pytest.approx(5 / run["decode_tok_s"])
    # Both count the same weights: embeddings + 2 layers + norm + lm_head, fp32.
    hidden, ffn, vocab = 64, 128, 500
    layer = 2 * hidden + hidden * hidden * 2 + 2 * hidden * 32 + 3 * hidden * ffn
    expected = 4 * (2 * vocab * hidden + 2 * layer + hidden)
    assert rows["minerva"]["weight_bytes"] == rows["transformers"]["weight_bytes"] == expected


def test_throughput_generates_exactly_the_requested_tokens(backends):
    reqs = build_workload("random:in=20,out=8,range=0.5", 6, seed=2, vocab_size=500)
    prompts, lens = [r.prompt_token_ids for r in reqs], [r.max_tokens for r in reqs]
    assert len(set(map(len, prompts))) > 1  # ragged: the transformers batch is left-padded
    for name, b in backends.items():
        r = run_throughput(b, prompts, lens)
        assert r["backend"] == name and r["num_requests"] == 6
        assert r["total_output_tokens"] == r["requested_output_tokens"] == sum(lens)
        assert r["total_input_tokens"] == sum(map(len, prompts))
        assert r["output_throughput"] == pytest.approx(sum(lens) / r["duration_s"])
        assert r["request_throughput"] == pytest.approx(6 / r["duration_s"])


def test_both_backends_agree_greedily_in_a_ragged_batch(backends, model_dir):
    tok = Tokenizer.from_folder(model_dir)
    texts = ["Hello world", "The quick brown fox jumps over", "Numbers 1234"]
    prompts = [tok.encode(t) for t in texts]
    outs = {n: b.generate(prompts, [10, 7, 12], ignore_eos=False) for n, b in backends.items()}
    (row,) = compare_all(outs, "tokens")
    assert row["exact_match"] == 1.0, outs
    assert [len(o) for o in outs["minerva"]][0] <= 10


def test_perplexity_agrees_between_backends_and_with_one_full_forward(backends, model_dir):
    tok = Tokenizer.from_folder(model_dir)
    ids = tok.encode(" ".join(["The quick brown fox jumps over the lazy dog."] * 6))[:120]
    hf = backends["transformers"].model
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, :-1].float()
    nll = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
    full = {n: perplexity(b.token_logprobs, ids, window=256) for n, b in backends.items()}
    for r in full.values():
        assert r["num_windows"] == 1 and r["perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)
    windowed = {
        n: perplexity(b.token_logprobs, ids, 32, 16)["perplexity"] for n, b in backends.items()
    }
    assert windowed["minerva"] == pytest.approx(windowed["transformers"], rel=1e-4)
    assert windowed["minerva"] != pytest.approx(full["minerva"]["perplexity"], rel=1e-6)


def test_unknown_backend_and_too_long_requests_are_user_errors(backends):
    with pytest.raises(ConfigError, match="choose from minerva, llamacpp, .*transformers"):
        load_driver("nonesuch", "x")
    with pytest.raises(ConfigError, match="exceed the model's length of 256"):
        run_latency(backends["minerva"], [5] * 250, 10)


def _run_cli(*args: str) -> None:
    assert main(["bench", *args, "--no-progress"]) == 0


def test_cli_latency_throughput_consistency_perplexity(model_dir, tmp_path, capsys):
    m = ["--model", str(model_dir), "--device", "cpu", "--dtype", "float32", "--num-threads", "1"]
    _run_cli(
        "latency",
        *m,
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--repeats",
        "1",
        "--output",
        str(tmp_path / "lat"),
    )
    lat = json.loads((tmp_path / "lat/results.json").read_text())
    assert [r["backend"] for r in lat["results"]] == ["minerva", "transformers"]
    assert lat["config"]["input_len"] == 16 and lat["system"]["torch"] == torch.__version__
    assert "## Ratios to minerva" in (tmp_path / "lat/report.md").read_text()

    _run_cli(
        "throughput",
        *m,
        "--backend",
        "minerva,transformers",
        "--num-prompts",
        "4",
        "--workload",
        "standard",
        "--max-tokens",
        "5",
        "--backend-arg",
        "transformers.max_batch_size=2",
        "--output",
        str(tmp_path / "thr"),
    )
    thr = json.loads((tmp_path / "thr/results.json").read_text())
    assert [r["total_output_tokens"] for r in thr["results"]] == [20, 20]
    assert (tmp_path / "thr/results.csv").read_text().count("\n") == 3

    _run_cli(
        "consistency",
        *m,
        "--backend",
        "minerva,transformers",
        "--num-prompts",
        "2",
        "--max-tokens",
        "6",
        "--output",
        str(tmp_path / "con"),
    )
    (pair,) = json.loads((tmp_path / "con/results.json").read_text())["results"]
    assert (pair["a"], pair["b"], pair["unit"]) == ("minerva", "transformers", "tokens")
    assert pair["exact_match"] == 1.0

    text = tmp_path / "text.txt"
    text.write_text("Hello world! How are you today? " * 10)
    _run_cli(
        "perplexity",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--backend",
        "minerva,transformers",
        "--file",
        str(text),
        "--window",
        "24",
        "--output",
        str(tmp_path / "ppl"),
    )
    p_min, p_hf = json.loads((tmp_path / "ppl/results.json").read_text())["results"]
    assert p_min["perplexity"] == pytest.approx(p_hf["perplexity"], rel=1e-4)
    assert p_min["num_scored"] == p_min["num_tokens"] - 1
    assert "perplexity" in capsys.readouterr().out


def test_an_engine_that_streams_nothing_until_the_end_has_no_decode_rate():
    """All tokens arriving at one instant (mistral.rs on a loaded machine drains its events per
    step) is a run without a decode figure, not a division by zero."""
    from minerva.bench.offline import run_latency

    class AllAtOnce:
        name, max_model_len, weight_bytes = "all-at-once", 64, 1

        def stream_timings(self, prompt_ids, output_len):
            now = time.perf_counter()
            return [now] * output_len

        def reset_peak_memory(self):
            pass

        def spec_decode_counters(self):
            return None

        def peak_gpu_bytes(self):
            return None

    row = run_latency(AllAtOnce(), [1, 2, 3], 8, repeats=2, warmup=0)
    assert row["decode_tok_s"] is None and row["tpot_ms"] is None and row["ttft_ms"] > 0
