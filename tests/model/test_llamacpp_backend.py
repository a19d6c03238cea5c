"""The llamacpp backend (llama.cpp through llama-cpp-python, where installed) on an F16 GGUF of
the bundled demo model, written in the test: it generates, streams, stops and aborts as the
Backend protocol says, and its greedy tokens, stop-string cuts and scores match Minerva's engine
on the same file. The demo model is trained, so greedy choices are not near-ties."""

from __future__ import annotations

import asyncio

import pytest
import torch

from minerva.backends import load_backend
from minerva.backends.blocking import BlockingBackend
from minerva.config import EngineConfig
from minerva.demo import demo_model_path
from minerva.errors import QueueFullError, RequestError
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import float_plan, write_gguf
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_types import GGMLType
from minerva.sampling_params import SamplingParams

pytest.importorskip("llama_cpp")

PROMPT = "SQLite is a database that"
NUM_TOKENS = 16
GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    folder = demo_model_path()
    out = tmp_path_factory.mktemp("llamacpp_backend") / "demo-f16.gguf"
    tensors = iter_checkpoint_tensors(folder, torch.device("cpu"), torch.float32, progress=False)
    config = load_model_config(folder)
    write_gguf(
        config, tensors, out, float_plan(GGMLType.F16), tokenizer_dir=folder, file_type="f16"
    )
    return out


def _open(path, backend: str, **kwargs) -> BlockingBackend:
    queued = kwargs.pop("max_queued_requests", 256)
    config = EngineConfig.from_kwargs(
        model=str(path), backend=backend, device="cpu", num_threads=1, max_model_len=256, **kwargs
    )
    return BlockingBackend(load_backend(backend, config, max_queued_requests=queued))


@pytest.fixture(scope="module")
def llama(gguf_path):
    runner = _open(gguf_path, "llamacpp", llamacpp_contexts=2)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def minerva(gguf_path):
    runner = _open(gguf_path, "minerva", dtype="float32")
    yield runner
    runner.close()


def _final(runner: BlockingBackend, prompt, **params):
    return runner.generate([prompt], [SamplingParams(**params)])[0]


def test_greedy_tokens_match_minerva_on_the_same_f16_file(llama, minerva):
    params = dict(max_tokens=NUM_TOKENS, ignore_eos=True, **GREEDY)
    ours, theirs = _final(minerva, PROMPT, **params), _final(llama, PROMPT, **params)
    assert llama.backend.encode(PROMPT) == minerva.backend.encode(PROMPT)
    assert theirs.token_ids == ours.token_ids and len(ours.token_ids) == NUM_TOKENS
    assert theirs.text == ours.text and theirs.finish_reason == "length"


def test_stream_deltas_add_up_to_the_final_output(llama):
    params = SamplingParams(max_tokens=12, ignore_eos=True, **GREEDY)
    outs = list(llama.stream(PROMPT, params))
    assert [o.finished for o in outs] == [False] * (len(outs) - 1) + [True]
    final = outs[-1].outputs[0]
    assert "".join(o.outputs[0].delta_text for o in outs) == final.text
    assert sum((o.outputs[0].delta_token_ids for o in outs), []) == final.token_ids
    assert len(final.token_ids) == 12 and final.finish_reason == "length"
    assert (
        final.token_ids == _final(llama, PROMPT, max_tokens=12, ignore_eos=True, **GREEDY).token_ids
    )


def test_stop_strings_and_stop_ids_end_the_text_as_minerva_does(llama, minerva):
    full = _final(minerva, PROMPT, max_tokens=NUM_TOKENS, ignore_eos=True, **GREEDY)
    stop = full.text.split()[3]  # a word in the middle of the greedy text
    for include in (False, True):
        params = dict(max_tokens=NUM_TOKENS, stop=[stop], include_stop_str_in_output=include)
        ours, theirs = (
            _final(minerva, PROMPT, **params, **GREEDY),
            _final(llama, PROMPT, **params, **GREEDY),
        )
        assert theirs.text == ours.text and theirs.outputs[0].stop_reason == stop
        assert theirs.finish_reason == "stop" and theirs.text.endswith(stop) == include
    stop_id = full.token_ids[5]
    theirs = _final(llama, PROMPT, max_tokens=NUM_TOKENS, stop_token_ids=[stop_id], **GREEDY)
    assert theirs.token_ids == full.token_ids[: full.token_ids.index(stop_id) + 1]
    assert theirs.outputs[0].stop_reason == stop_id


def test_a_seed_gives_the_same_text_and_another_seed_another(llama):
    params = dict(max_tokens=24, ignore_eos=True, temperature=1.5, top_k=0, top_p=1.0)
    a, b = (_final(llama, "Once upon", seed=7, **params) for _ in range(2))
    c = _final(llama, "Once upon", seed=8, **params)
    # the second run reuses the first one's cached prompt, whose logits can differ in the last
    # bits from a fresh prefill: at temperature 1.5 a draw near a boundary may then flip later on
    # (seen at token 15 of 24 once), so the same seed must agree on the first tokens
    assert a.token_ids[:8] == b.token_ids[:8] and a.token_ids != c.token_ids


def test_abort_stops_generation_and_frees_the_context(gguf_path):
    runner = _open(gguf_path, "llamacpp", llamacpp_contexts=1, max_queued_requests=1)
    backend = runner.backend
    assert backend.max_concurrency == 1
    long = SamplingParams(max_tokens=200, ignore_eos=True, **GREEDY)

    async def scenario():
        first = await backend.add_request(PROMPT, long)
        queued = await backend.add_request(PROMPT, long)
        with pytest.raises(QueueFullError):  # one running, one queued: full
            await backend.add_request(PROMPT, long)
        out = await anext(aiter(first))
        assert len(out.outputs[0].token_ids) < 200
        queued.abort()  # leaves the queue without running
        first.abort()  # ends at its next token
        short = await backend.add_request(PROMPT, SamplingParams(max_tokens=4, **GREEDY))
        finals = [o async for o in short]
        return finals[-1]

    final = runner.run(asyncio.wait_for(scenario(), 120))  # a hang guard, not a speed check
    assert final.finished and len(final.outputs[0].token_ids) == 4
    stats = backend.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_requests_in_flight) == (0, 0, 0)
    runner.close()


def test_two_contexts_run_two_requests_at_once_with_the_same_tokens(llama):
    prompts = [PROMPT, "The weather today", PROMPT]
    params = [SamplingParams(max_tokens=10, ignore_eos=True, **GREEDY)] * 3
    together = llama.generate(prompts, params)
    alone = [_final(llama, p, max_tokens=10, ignore_eos=True, **GREEDY) for p in prompts]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert llama.backend.max_concurrency == 2


def test_unsupported_request_fields_are_request_errors(llama):
    with pytest.raises(RequestError, match="does not support logprobs.*--backend minerva"):
        _final(llama, PROMPT, max_tokens=2, logprobs=2)
    with pytest.raises(RequestError, match="maximum context length is 256"):
        _final(llama, PROMPT, max_tokens=400)


def test_scores_match_minerva(llama, minerva):
    ids = minerva.backend.encode("SQLite is a database that stores everything in one file.")
    ours, theirs = minerva.score(ids), llama.score(ids)
    assert len(theirs) == len(ids) - 1
    assert theirs == pytest.approx(ours, abs=2e-2)  # F16 weights, two engines' float orders


def test_model_info_and_chat_come_from_the_file(llama, minerva):
    info = llama.backend.model_info()
    assert (info.format, info.quantization, info.device) == ("gguf", "F16", "cpu")
    assert info.vocab_size == 4096 and info.context_length == 256
    assert info.digest == minerva.backend.model_info().digest
    messages = [{"role": "user", "content": "hi"}]
    assert llama.backend.apply_chat_template(messages) == minerva.backend.apply_chat_template(
        messages
    )


def test_cli_generate_with_the_llamacpp_backend(gguf_path, minerva, capsys):
    from minerva.cli import main

    args = ["generate", PROMPT, "--model", str(gguf_path), "--backend", "llamacpp",
            "--device", "cpu", "--max-tokens", "16", "--ignore-eos", "--temperature", "0",
            "--repetition-penalty", "1"]  # fmt: skip
    assert main(args) == 0
    expected = _final(minerva, PROMPT, max_tokens=16, ignore_eos=True, **GREEDY).text
    assert capsys.readouterr().out == expected + "\n"


def test_cli_chat_with_the_llamacpp_backend(gguf_path, llama, capsys, monkeypatch):
    from tests.backend_checks import check_cli_chat

    args = ("--num-threads", "1", "--max-model-len", "256")
    check_cli_chat("llamacpp", gguf_path, llama, capsys, monkeypatch, *args)


def test_a_folder_is_converted_once_and_runs_the_same_weights(tmp_path, monkeypatch, llama):
    """The demo folder as F16 (the fixture's file's tokens) and, through llama.cpp's own
    quantizer, as Q8_0 (the same tokens from Minerva on that cached file)."""
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(tmp_path))
    params = dict(max_tokens=NUM_TOKENS, ignore_eos=True, **GREEDY)
    folder = demo_model_path()
    f16 = _open(folder, "llamacpp")
    assert _final(f16, PROMPT, **params).token_ids == _final(llama, PROMPT, **params).token_ids
    f16.close()
    (cached,) = (tmp_path / "gguf").glob("*.gguf")
    stamp = cached.stat().st_mtime_ns
    q8 = _open(folder, "llamacpp", quantization="q8_0")
    assert q8.backend.model_info().quantization == "Q8_0"
    theirs = _final(q8, PROMPT, **params).token_ids
    q8.close()
    assert cached.stat().st_mtime_ns == stamp  # the F16 file was reused, not rewritten
    (q8_file,) = (tmp_path / "gguf").glob("*-q8_0-*.gguf")
    ours = _open(q8_file, "minerva", dtype="float32")
    assert _final(ours, PROMPT, **params).token_ids == theirs
    ours.close()
