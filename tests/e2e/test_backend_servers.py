"""``minerva serve --backend mlx | mistralrs`` as a real subprocess over the tiny server model,
through the official ``openai`` and ``ollama`` clients: the greedy text the backend gives
in-process, streams that add up, stop strings, a closed stream aborted inside the engine (the
abort counted, nothing left running), and the common metrics."""

from __future__ import annotations

import importlib.util

import ollama
import openai
import pytest

from minerva.sampling_params import SamplingParams
from tests import backend_checks as checks
from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MODEL_NAME

PROMPT = "The quick brown fox"
COMPLETIONS = "/v1/completions"
BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(package) is None, reason=f"{package} is not installed"
        ),
    )
    for name, package in (("mlx", "mlx_lm"), ("mistralrs", "mistralrs"))
]


@pytest.fixture(scope="module", params=BACKENDS)
def served(request, model_dir, tmp_path_factory):
    """(backend name, server, the backend's own greedy text of PROMPT in this process)."""
    name = request.param
    # one thread, as the server below: a float32 sum in another order can flip a near tie
    b = checks.blocking(name, model_dir, dtype="float32", num_threads=1)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=12)
        (out,) = b.generate([b.backend.encode(PROMPT)], [params])
    finally:
        b.close()
    log = tmp_path_factory.mktemp("logs") / f"{name}.log"
    srv = start_server(model_dir, log, "--backend", name)
    yield name, srv, out.text
    srv.stop()


def test_openai_and_ollama_give_the_backends_greedy_text(served):
    name, srv, expected = served
    oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", timeout=120)
    whole = oai.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = oai.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    pieces = [c.choices[0].text for c in chunks if c.choices]
    # How many pieces depends on timing: the backend's engine thread hands over every token it
    # has made since the last read, so on a loaded machine all 12 can come as one delta.
    assert whole.choices[0].text == expected == "".join(pieces) and pieces
    oll = ollama.Client(host=srv.url, timeout=120)
    gen = oll.generate(MODEL_NAME, PROMPT, raw=True, options={"num_predict": 12, "temperature": 0})
    assert gen.response == expected
    stop = next(expected[i : i + 2] for i in range(2, len(expected) - 2) if expected[i:i+2].strip())  # fmt: skip
    cut = oai.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == expected[: expected.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    messages = [{"role": "user", "content": "hi"}]
    chat = oai.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0
    )
    ochat = oll.chat(MODEL_NAME, messages=messages, options={"num_predict": 8, "temperature": 0})
    assert chat.choices[0].message.content == ochat.message.content
    assert chat.usage.completion_tokens == 8


def test_closing_a_stream_aborts_it_inside_the_engine(served):
    _, srv, _ = served
    aborts_key = 'minerva_requests_finished_total{finish_reason="abort"}'
    aborts = srv.metrics().get(aborts_key, 0.0)
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1500, "ignore_eos": True,
            "stream": True}  # fmt: skip
    with srv.client() as client, client.stream("POST", COMPLETIONS, json=body) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got == 3:
                assert srv.metrics()["minerva_requests_running"] == 1
                break  # closes the connection
    m = srv.wait_idle()
    assert m["minerva_requests_running"] == 0 and m["minerva_requests_waiting"] == 0
    assert srv.metrics()[aborts_key] == aborts + 1
    ttft = m["minerva_time_to_first_token_seconds_count"]
    assert ttft >= 1 and m["minerva_inter_token_latency_seconds_count"] >= 2
    assert m["minerva_generation_tokens_total"] >= 3
