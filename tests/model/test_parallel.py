"""Tensor and pipeline parallelism on the CPU: two ranks (this process and a spawned one, gloo)
against one device on the same tiny random weights: logits within fp32 tolerance, greedy and
seeded sampled tokens identical, prompt scores and embeddings equal; a rank killed or hung fails
the engine with a DistributedError naming it instead of hanging."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from minerva import LLM, SamplingParams
from minerva.distributed import DistributedError
from minerva.sampling_params import StructuredOutputs
from tests.tiny_models import build_tiny_model, build_tiny_text_model

ARCHS = {
    # an odd vocabulary (padded shards), tied embeddings, biases in q/k/v, o_proj and the MLP
    "llama": (
        "llama",
        dict(vocab_size=251, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    ),  # fmt: skip
    "mistral": ("mistral", dict(sliding_window=8)),  # prompts longer than the window
    "qwen2": ("qwen2", {}),  # bias in qkv only
    "qwen3": ("qwen3", {}),  # per-head q / k norms: each rank norms its own heads
}
PROMPTS = [list(range(3, 23)), [40, 41, 42, 43, 44]]
OPTIONS = dict(device="cpu", dtype="float32", block_size=4, num_threads=1, progress=False)


LAYOUTS = {
    "one": {},
    "tp2": dict(tensor_parallel_size=2),
    "pp2": dict(pipeline_parallel_size=2),
    "tp2pp2": dict(tensor_parallel_size=2, pipeline_parallel_size=2),  # 4 processes
}
PIPELINE_ARCHS = ("llama",)  # one architecture is enough for the layer split: fewer spawns


def _run(path, **layout) -> dict:
    """Greedy tokens with each step's logits, seeded sampled tokens, prompt scores, an
    embedding (the pooled hidden state)."""
    llm = LLM(model=str(path), **OPTIONS, **layout)
    try:
        runner = llm.engine.worker.runner  # rank 0's
        runner.captured_logits = []
        greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        tokens = [o.token_ids for o in llm.generate(PROMPTS, greedy)]
        logits = runner.captured_logits
        runner.captured_logits = None
        sampled = SamplingParams(max_tokens=6, temperature=0.9, top_p=0.95, seed=11, n=2,
                                 ignore_eos=True)  # fmt: skip
        samples = [[c.token_ids for c in o.outputs] for o in llm.generate(PROMPTS, sampled)]
        return dict(
            tokens=tokens,
            logits=logits,
            samples=samples,
            score=llm.engine.score(PROMPTS[0]),
            embedding=llm.embed([PROMPTS[1]])[0],
        )
    finally:
        llm.close()


@pytest.fixture(scope="module", params=list(ARCHS))
def runs(request, tmp_path_factory):
    arch, overrides = ARCHS[request.param]
    path = tmp_path_factory.mktemp(f"tp-{request.param}")
    build_tiny_model(path, arch, seed=3, **overrides)
    layouts = [n for n in LAYOUTS if "pp" not in n or request.param in PIPELINE_ARCHS]
    return {name: _run(path, **LAYOUTS[name]) for name in layouts}


def _pairs(runs):
    """(one device, a parallel layout) for each parallel layout run."""
    return [(runs["one"], runs[name]) for name in runs if name != "one"]


def test_logits_match_one_device(runs):
    for one, other in _pairs(runs):
        assert len(one["logits"]) == len(other["logits"]) > 0
        for a, b in zip(one["logits"], other["logits"]):
            assert a.shape == b.shape
            assert (a - b).abs().max().item() < 1e-4


def test_greedy_and_seeded_tokens_identical(runs):
    for one, other in _pairs(runs):
        assert one["tokens"] == other["tokens"]
        assert one["samples"] == other["samples"]
    one = runs["one"]
    assert one["samples"][0][0] != one["samples"][0][1]  # the two seeds differ: not greedy


def test_prompt_scores_and_embeddings_match(runs):
    for one, other in _pairs(runs):
        assert max(abs(a - b) for a, b in zip(one["score"], other["score"])) < 1e-4
        assert max(abs(a - b) for a, b in zip(one["embedding"], other["embedding"])) < 1e-5


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp-fail")
    build_tiny_model(path, "llama", seed=3)
    return path


def _generate_in_thread(llm: LLM) -> tuple[threading.Thread, list]:
    """llm.generate on a thread, its exception (or None) in the returned list."""
    outcome: list = []

    def go() -> None:
        try:
            llm.generate([PROMPTS[0]], SamplingParams(max_tokens=4, temperature=0.0))
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, outcome


def test_killed_rank_fails_the_engine_with_its_name(llama_path):
    """Rank 1 killed while rank 0 waits for it inside the step's collectives."""
    llm = LLM(model=str(llama_path), tensor_parallel_size=2, parallel_timeout=60, **OPTIONS)
    try:
        rank1 = llm.engine.worker._ranks[0].process
        os.kill(rank1.pid, signal.SIGSTOP)  # frozen: rank 0 blocks in its first all-reduce
        thread, outcome = _generate_in_thread(llm)
        time.sleep(0.5)
        os.kill(rank1.pid, signal.SIGKILL)
        thread.join(60)  # a liveness bound, not a speed check: it fails within ~1 s
        assert outcome, "the engine hung after its rank died"
        error = outcome[0]
        assert isinstance(error, DistributedError)
        assert "parallel rank 1" in str(error) and "exited with code -9" in str(error)
        with pytest.raises(DistributedError, match="rank 1"):  # and stays failed
            llm.generate([PROMPTS[1]], SamplingParams(max_tokens=2))
    finally:
        llm.close()


def test_hung_rank_times_out(llama_path):
    # a collective timeout of 5 s: the start-up's collectives, between ranks doing the same
    # tiny work, meet well within it
    llm = LLM(model=str(llama_path), tensor_parallel_size=2, parallel_timeout=5, **OPTIONS)
    try:
        rank1 = llm.engine.worker._ranks[0].process
        os.kill(rank1.pid, signal.SIGSTOP)
        thread, outcome = _generate_in_thread(llm)
        thread.join(60)
        assert outcome, "the engine hung with a stopped rank"
        assert isinstance(outcome[0], DistributedError)
        assert "parallel_timeout" in str(outcome[0])
    finally:
        llm.close()  # kills the stopped rank


def test_config_errors_reach_the_caller(llama_path):
    """Refused before any rank starts, with the fix."""
    from minerva.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the model's num_attention_heads"):
        LLM(model=str(llama_path), tensor_parallel_size=3, **OPTIONS)
    with pytest.raises(ConfigError, match="pipeline_parallel_size=3 is more than the model's 2"):
        LLM(model=str(llama_path), pipeline_parallel_size=3, **OPTIONS)


def test_one_device_never_calls_a_collective(llama_path, monkeypatch):
    """World size 1 runs no collective and no parallel layer: the single-device path is the
    one it was (its logits against transformers are test_vs_transformers')."""
    import torch.distributed as dist

    def refuse(*args, **kwargs):
        raise AssertionError("a collective ran on one device")

    for name in ("all_reduce", "all_gather", "broadcast", "send", "recv", "all_gather_object"):
        monkeypatch.setattr(dist, name, refuse)
    llm = LLM(model=str(llama_path), **OPTIONS)
    out = llm.generate(PROMPTS, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in out] == [3, 3]
    model = llm.engine.worker.model
    assert model.gather_logits is None and model.pipeline is None
    assert all(layer.self_attn.all_reduce is None for layer in model.model.layers)


def test_draft_model_speculation_on_rank_zero(llama_path, tmp_path):
    """A draft model (whole, on rank 0) proposing for a TP=2 target: greedy tokens equal the
    one-device target's without speculation (verification keeps greedy exact)."""
    draft = tmp_path / "draft"
    build_tiny_model(draft, "llama", seed=4)  # another model: some proposals are rejected
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    one = LLM(model=str(llama_path), **OPTIONS)
    want = [o.outputs[0].token_ids for o in one.generate(PROMPTS, greedy)]
    spec = dict(num_speculative_tokens=2, draft_model=str(draft), speculative_adaptive=False)
    llm = LLM(model=str(llama_path), tensor_parallel_size=2, **OPTIONS, **spec)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy)] == want
        assert llm.engine.stats().spec_decode.num_draft_tokens > 0
    finally:
        llm.close()


def test_structured_outputs_and_token_healing_match_one_device(tmp_path):
    """The grammar matchers live on rank 0; its bitmask reaches every rank, so sampled JSON
    (seeded, not greedy: a rank without the mask would sample another token) is the same, with
    async scheduling too."""
    path = build_tiny_text_model(tmp_path / "text", seed=2)
    json = SamplingParams(max_tokens=12, temperature=1.0, seed=7, n=2,
                          structured=StructuredOutputs(json_object=True))  # fmt: skip
    healed = SamplingParams(max_tokens=6, temperature=0.0, token_healing=True)

    def outputs(**layout) -> list:
        llm = LLM(model=str(path), **OPTIONS, **layout)
        try:
            texts = [c.text for c in llm.generate(["Give JSON: "], json)[0].outputs]
            return texts + [llm.generate(["The quick bro"], healed)[0].outputs[0].text]
        finally:
            llm.close()

    one = outputs()
    assert one[0] != one[1] and one[0].startswith("{")  # sampled, and constrained
    assert outputs(tensor_parallel_size=2) == one
    # async: every rank queues a step's forward first and samples it once rank 0 has read the
    # step before (ParallelWorker.sample), the bitmask broadcast then
    assert outputs(tensor_parallel_size=2, async_scheduling="on") == one


def test_in_situ_quantization_matches_one_device(llama_path):
    """q8_0 in situ: each rank quantizes its slice of the float weights (whole blocks, rows
    quantized apart), so the quantized model is the one-device one, split."""

    def run(**layout):
        llm = LLM(model=str(llama_path), quantization="q8_0", **OPTIONS, **layout)
        try:
            llm.engine.worker.runner.captured_logits = []
            greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
            tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy)]
            return tokens, llm.engine.worker.runner.captured_logits
        finally:
            llm.close()

    (one, one_logits), (two, two_logits) = run(), run(tensor_parallel_size=2)
    assert one == two
    assert max((a - b).abs().max().item() for a, b in zip(one_logits, two_logits)) < 1e-3
