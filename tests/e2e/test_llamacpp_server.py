"""``minerva serve --backend llamacpp`` (where llama-cpp-python is installed) through the official
``openai`` and ``ollama`` clients, on an F16 GGUF of the demo model: both APIs give the greedy
text the backend gives in-process, stream it in pieces that add up, cut at stop strings, repeat
a seeded sample, refuse what llama.cpp cannot do with a 400, and count into /metrics."""

from __future__ import annotations

import ollama
import openai
import pytest
import torch

from minerva.backends import load_backend
from minerva.backends.blocking import BlockingBackend
from minerva.config import EngineConfig
from minerva.demo import demo_model_path
from minerva.loader.checkpoint import iter_checkpoint_tensors
from minerva.loader.gguf_export import float_plan, write_gguf
from minerva.loader.hf_config import load_model_config
from minerva.quant.gguf_types import GGMLType
from minerva.sampling_params import SamplingParams
from tests.e2e.conftest import start_server

pytest.importorskip("llama_cpp")

NAME = "demo-llamacpp"
PROMPT = "SQLite is a database that"
MESSAGES = [{"role": "user", "content": "What is a tensor?"}]
GREEDY = {"temperature": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    folder = demo_model_path()
    out = tmp_path_factory.mktemp("llamacpp_server") / "demo-f16.gguf"
    tensors = iter_checkpoint_tensors(folder, torch.device("cpu"), torch.float32, progress=False)
    config = load_model_config(folder)
    write_gguf(
        config, tensors, out, float_plan(GGMLType.F16), tokenizer_dir=folder, file_type="f16"
    )
    return out


@pytest.fixture(scope="module")
def server(gguf_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "llamacpp.log"
    srv = start_server(gguf_path, log, "--backend", "llamacpp", "--llamacpp-contexts", "2",
                       served_name=NAME)  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected(gguf_path):
    """The backend's own greedy texts, in this process."""
    config = EngineConfig.from_kwargs(model=str(gguf_path), backend="llamacpp", device="cpu")
    runner = BlockingBackend(load_backend("llamacpp", config))
    params = SamplingParams(max_tokens=20, **GREEDY)
    chat_ids = runner.backend.apply_chat_template(MESSAGES)
    outs = runner.generate([PROMPT, chat_ids], [params, params])
    runner.close()
    return {"completion": outs[0].text, "chat": outs[1].text}


@pytest.fixture(scope="module")
def clients(server):
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120)
    return oai, ollama.Client(host=server.url, timeout=120)


def test_both_apis_give_the_backends_greedy_text(clients, expected):
    oai, oll = clients
    extra = {"repetition_penalty": 1.0}
    a = oai.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=20, temperature=0, extra_body=extra
    )
    b = oll.generate(NAME, PROMPT, raw=True, options={"num_predict": 20, "temperature": 0,
                                                        "repeat_penalty": 1.0})  # fmt: skip
    assert a.choices[0].text == b.response == expected["completion"]
    c = oai.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=20, temperature=0, extra_body=extra
    )
    d = oll.chat(NAME, messages=MESSAGES, options={"num_predict": 20, "temperature": 0,
                                                   "repeat_penalty": 1.0})  # fmt: skip
    assert c.choices[0].message.content == d.message.content == expected["chat"]
    assert c.usage.completion_tokens == d.eval_count


def test_streams_add_up_to_the_whole_text(clients, expected):
    oai, oll = clients
    options = {"num_predict": 20, "temperature": 0, "repeat_penalty": 1.0}
    chunks = oai.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=20, temperature=0, stream=True,
        extra_body={"repetition_penalty": 1.0},
    )  # fmt: skip
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == expected["chat"]
    parts = list(oll.chat(NAME, messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == expected["chat"] and parts[-1].done


def test_stop_strings_and_seeds(clients, expected):
    oai, _ = clients
    stop = expected["completion"].split()[2]
    r = oai.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop],
        extra_body={"repetition_penalty": 1.0},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == expected["completion"][: expected["completion"].index(stop)]

    def sample(seed: int) -> str:
        out = oai.completions.create(
            model=NAME, prompt="Once upon", max_tokens=16, temperature=1.2, seed=seed
        )
        return out.choices[0].text

    assert sample(3) == sample(3) != sample(4)


def test_what_llama_cpp_cannot_do_is_a_400_naming_the_fix(clients):
    oai, _ = clients
    with pytest.raises(openai.BadRequestError, match="does not support logprobs"):
        oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=4, logprobs=2)


def test_requests_count_into_the_metrics(clients, server):
    oai, _ = clients
    before = server.metrics()
    oai.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, temperature=0,
                           extra_body={"ignore_eos": True})  # fmt: skip
    after = server.wait_idle()
    assert after["minerva_generation_tokens_total"] - before["minerva_generation_tokens_total"] == 5
    for name in (
        "minerva_time_to_first_token_seconds_count",
        "minerva_e2e_request_latency_seconds_count",
        'minerva_requests_finished_total{finish_reason="length"}',
    ):
        assert after[name] - before[name] == 1, name
    assert after["minerva_requests_running"] == 0 and after["minerva_kv_cache_usage_ratio"] == 0
