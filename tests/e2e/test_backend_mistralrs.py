"""The mistral.rs backend (the ``mistralrs`` package) on a tiny Hugging Face folder made here and
the float32 GGUF file Minerva writes from it.

Reference: Minerva's engine on the same float32 weights (greedy tokens must agree, safetensors,
GGUF and mistral.rs's in-situ Q8_0 alike for the first tokens). What the package cannot do is a
clear error: per-request seeds (one engine seed, documented), PagedAttention on the CPU, mixes
as ISQ types, and speculative decoding (with the seed's note on paged attention and prefix
caching)."""

from __future__ import annotations

import logging

import pytest

from minerva.errors import ConfigError, RequestError
from minerva.sampling_params import SamplingParams
from tests import backend_checks as checks
from tests.tiny_models import build_tiny_text_model

pytest.importorskip(
    "mistralrs", reason="mistralrs is not installed (pip install minerva-llm[mistralrs])"
)

N = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from minerva.quantize import quantize_model

    root = tmp_path_factory.mktemp("mistralrs")
    hf = build_tiny_text_model(root / "hf")
    gguf = quantize_model(hf, root / "tiny-f32.gguf", "f32", progress=False)
    return {"hf": hf, "gguf": gguf}


@pytest.fixture(scope="module")
def backend(models):
    b = checks.blocking("mistralrs", models["hf"], dtype="float32")
    yield b
    b.close()


@pytest.fixture(scope="module")
def prompt_ids(backend):
    return backend.backend.encode(checks.PROMPT)


@pytest.mark.parametrize("model", ["hf", "gguf"])
def test_greedy_tokens_agree_with_minervas_engine(models, model):
    b = checks.blocking("mistralrs", models[model], dtype="float32")
    try:
        ids = b.backend.encode(checks.PROMPT)
        got = checks.greedy(b, ids, N)
        info = b.backend.model_info()
        assert info.format == ("gguf" if model == "gguf" else "safetensors")
        assert info.digest.startswith("sha256:") and info.device == "cpu"
    finally:
        b.close()
    reference = checks.minerva_greedy(models[model], ids, N)
    assert got == reference, f"first divergence at {checks.first_divergence(got, reference)}"


def test_in_situ_q8_0_agrees_with_minervas_q8_0(models, prompt_ids):
    """MISTRALRS_ISQ=Q8_0 and Minerva's in-situ q8_0 quantize to the same GGML blocks: the
    same 16 greedy tokens (float32 weights give other tokens here, so this is not a no-op)."""
    b = checks.blocking("mistralrs", models["hf"], quantization="Q8_0")
    try:
        assert b.backend.model_info(digest=False).quantization == "ISQ_Q8_0"
        got = checks.greedy(b, prompt_ids, N)
    finally:
        b.close()
    reference = checks.minerva_greedy(models["hf"], prompt_ids, N, quantization="q8_0")
    assert got == reference, f"first divergence at {checks.first_divergence(got, reference)}"


def test_generate_stream_abort_and_stop_strings(backend, prompt_ids):
    checks.check_stream_equals_generate(backend, prompt_ids)
    checks.check_abort(backend, prompt_ids)
    checks.check_stop_string(backend, prompt_ids)


def test_sampled_tokens_logprobs_and_concurrency(backend, prompt_ids):
    """Sampled requests run side by side; each token's id is recovered from its chunk (its
    logprob is the one mistral.rs reported, its rank among the top entries)."""
    params = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, logprobs=2)
    outs = backend.generate([prompt_ids] * 3, [params] * 3)
    for out in outs:
        assert len(out.token_ids) == 12 and out.finish_reason == "length"
        for token, lp in zip(out.token_ids, out.outputs[0].logprobs):
            assert lp.token_id == token and lp.logprob <= 0 and len(lp.top_token_ids) == 2
            assert lp.rank >= 1 and (lp.rank > 1 or lp.top_token_ids[0] == token)
        assert backend.backend.decode(out.token_ids) == out.text


def test_token_ids_whose_text_does_not_round_trip_are_refused(backend):
    """Two byte tokens that merge into one when their text is tokenized again."""
    from minerva.structured import vocabulary_of

    tok = backend.backend._tokenizer
    vocab = vocabulary_of(tok, backend.backend.vocab_size, [])
    single = {b: i for i, b in enumerate(vocab.token_bytes) if len(b) == 1}
    merged = next(
        b
        for b in vocab.token_bytes
        if len(b) == 2 and b.isascii() and all(bytes([c]) in single for c in b)
    )
    ids = [single[bytes([merged[0]])], single[bytes([merged[1]])]]
    with pytest.raises(RequestError, match="take prompts as text|takes prompts as text"):
        backend.generate([ids], [SamplingParams(max_tokens=2)])
    assert checks.greedy(backend, backend.backend.encode("ok"), 2)  # still serving


def test_both_apis_through_the_official_clients(backend, models, prompt_ids):
    (out,) = backend.generate([prompt_ids], [SamplingParams(temperature=0.0, max_tokens=8)])
    factory = lambda: checks.load_backend(  # noqa: E731
        "mistralrs", checks.EngineConfig.from_kwargs(model=str(models["hf"]), dtype="float32")
    )
    checks.check_both_apis(factory, out.text)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantization": "q4_k_m"}, "llama.cpp mix"),
        ({"mistralrs_paged_attn": "on"}, "PagedAttention on CUDA and Metal only"),
        ({"device": "cuda"}, "runs on cpu"),
        ({"kv_cache_dtype": "fp8"}, "8-bit KV cache"),
        (
            {"draft_model": "/models/draft", "num_speculative_tokens": 4},
            "does not combine with prefix caching",
        ),
        (
            {
                "speculative_method": "ngram",
                "num_speculative_tokens": 4,
                "enable_prefix_caching": False,
            },
            "only with a model's own multi-token prediction heads",
        ),
    ],
    ids=["mix", "paged-on-cpu", "cuda", "fp8-kv", "spec+prefix", "spec"],
)
def test_what_mistralrs_cannot_do_is_a_config_error(models, settings, message):
    with pytest.raises(ConfigError, match=message):
        checks.blocking("mistralrs", models["hf"], **settings)


def test_the_seed_names_reach_the_runner(monkeypatch):
    """MISTRALRS_* variables -> Minerva fields -> the Runner's arguments."""
    from minerva.backends.mistralrs_options import runner_options
    from minerva.config import load_config

    for name, value in {
        "MISTRALRS_ISQ": "Q6K", "MISTRALRS_PAGED_ATTN": "true",
        "MISTRALRS_PAGED_ATTN_BLOCK_SIZE": "32", "MISTRALRS_PREFIX_CACHE_N": "0",
        "MISTRAL_MAX_RUNNING_REQUESTS": "8",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    options = runner_options(load_config()[0], is_gguf=False, device="cuda")
    assert options.kwargs == {
        "max_seqs": 8, "prefix_cache_n": 0, "token_source": "none", "seed": 0,
        "in_situ_quant": "Q6K", "paged_attn": True, "pa_blk_size": 32,
    }  # fmt: skip
    monkeypatch.setenv("MISTRALRS_PAGED_ATTN", "false")
    monkeypatch.delenv("MISTRALRS_PREFIX_CACHE_N")
    options = runner_options(load_config()[0], is_gguf=False, device="cpu")
    assert options.kwargs["no_paged_attn"] is True and options.kwargs["prefix_cache_n"] == 16
    assert "seed" not in options.kwargs  # mistral.rs cannot seed its CPU generator


def test_cli_generate_and_doctor(backend, models, prompt_ids, capsys):
    (out,) = backend.generate([prompt_ids], [SamplingParams(temperature=0.0, max_tokens=8)])
    checks.check_cli_generate("mistralrs", models["hf"], out.text, capsys)
    from importlib.metadata import version

    probe = checks.check_doctor("mistralrs", "request seeds are NOT honoured")
    assert probe["version"] == version("mistralrs") and probe["device"].startswith("cpu")


def test_isq_prompts_sent_together_all_finish_with_their_own_tokens():
    """mistral.rs 0.9.5 with ISQ fails a step that prefills several prompts (seen on the demo
    model: 6 of 8 requests failed); the backend sends one prompt at a time, so all finish, each
    with the tokens it gets alone."""
    from minerva.demo import demo_model_path

    b = checks.blocking("mistralrs", demo_model_path(), quantization="q8_0", num_threads=2)
    words = "the quick brown fox jumps over lazy dog SQLite is a database engine that".split()
    try:
        prompts = [
            b.backend.encode(" ".join(words[(i + j) % len(words)] for j in range(140)))[:128]
            for i in range(8)
        ]
        params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
        together = b.generate(prompts, [params] * len(prompts))
        alone = [b.generate([p], [params])[0] for p in prompts[:2]]
    finally:
        b.close()
    assert [o.finish_reason for o in together] == ["length"] * len(prompts)
    assert [o.token_ids for o in together[:2]] == [o.token_ids for o in alone]


def test_a_request_seed_is_not_honoured_and_the_log_says_so_once(models, prompt_ids, caplog):
    """Not silently ignored: the first seeded sampled request logs that seeds are per engine;
    greedy requests (no randomness to seed) and later ones do not repeat it."""
    b = checks.blocking("mistralrs", models["hf"], dtype="float32")  # fresh: no warning yet
    sampled = SamplingParams(temperature=1.0, seed=7, max_tokens=2, ignore_eos=True)
    try:
        with caplog.at_level(logging.WARNING, logger="minerva.backends.mistralrs_engine"):
            b.generate([prompt_ids], [SamplingParams(temperature=0.0, seed=7, max_tokens=2)])
            greedy_warnings = len(caplog.records)
            b.generate([prompt_ids, prompt_ids], [sampled, sampled])
            b.generate([prompt_ids], [sampled])
    finally:
        b.close()
    warnings = [r.getMessage() for r in caplog.records if "seed" in r.getMessage()]
    assert greedy_warnings == 0
    assert warnings == [
        "mistral.rs has one seed per engine (--seed): request seeds are not honoured"
    ]


def test_cli_chat(backend, models, capsys, monkeypatch):
    checks.check_cli_chat(
        "mistralrs", models["hf"], backend, capsys, monkeypatch, "--dtype", "float32"
    )


def test_the_models_generation_config_does_not_leak_into_requests(models, tmp_path):
    """mistral.rs fills a knob the request leaves out from generation_config.json: every knob
    is sent explicitly, so a folder whose config asks for repetition_penalty 1.5 still gives
    the unpenalised greedy tokens when the request says 1.0 (and 1.5 would change them)."""
    import json
    import shutil

    folder = tmp_path / "with-defaults"
    shutil.copytree(models["hf"], folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(repetition_penalty=1.5, top_k=3, temperature=0.7, do_sample=True)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    b = checks.blocking("mistralrs", folder, dtype="float32")
    try:
        ids = b.backend.encode(checks.PROMPT)
        got = checks.greedy(b, ids, N)
    finally:
        b.close()
    plain = checks.minerva_greedy(models["hf"], ids, N)
    assert got == plain
    ref = checks.blocking("minerva", models["hf"], dtype="float32", num_kv_blocks=64)
    try:
        params = SamplingParams(
            temperature=0.0, max_tokens=N, ignore_eos=True, repetition_penalty=1.5
        )
        (penalised,) = ref.generate([ids], [params])
    finally:
        ref.close()
    assert penalised.token_ids != plain
