"""``minerva serve --models-dir`` with two tiny random models, through the official ollama
client: list, ps, show and chat with both at once; the answers equal the single-model server's
for the same weights, and keep_alive 0 unloads."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest

from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MAX_LEN, MODEL_NAME, build_server_model

OPTIONS = {"num_predict": 8, "temperature": 0}
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    build_server_model(_mkdir(root / "alpha"), seed=0)  # the shared server's weights
    build_server_model(_mkdir(root / "beta:v2"), seed=1)
    log = tmp_path_factory.mktemp("logs") / "models_dir.log"
    srv = start_server(root, log, models_dir=root)
    yield srv
    srv.stop()


def _mkdir(path):
    path.mkdir()
    return path


def test_list_ps_show_and_chat_with_two_models(multi_server, server):
    client = ollama.Client(host=multi_server.url, timeout=60)
    assert client.ps().models == []  # nothing loads before it is asked for
    listed = {m.model: m for m in client.list().models}
    assert sorted(listed) == ["alpha:latest", "beta:v2"]
    assert listed["alpha:latest"].details.format == "safetensors"
    assert listed["alpha:latest"].size == listed["beta:v2"].size > 0

    with ThreadPoolExecutor(4) as pool:  # both models load and answer concurrently
        jobs = [
            pool.submit(client.chat, m, MESSAGES, options=OPTIONS) for m in ("alpha", "beta:v2")
        ]
        alpha, beta = [j.result() for j in jobs]

    single = ollama.Client(host=server.url, headers=server.headers, timeout=60)
    reference = single.chat(MODEL_NAME, MESSAGES, options=OPTIONS)
    assert alpha.message.content == reference.message.content  # the same weights, greedy
    assert alpha.eval_count == reference.eval_count
    assert beta.message.content != alpha.message.content  # other weights, other answer
    same_files = single.list().models[0].digest
    assert listed["alpha:latest"].digest == same_files != listed["beta:v2"].digest

    running = {m.model: m for m in client.ps().models}
    assert sorted(running) == ["alpha:latest", "beta:v2"]
    now = dt.datetime.now(dt.timezone.utc)
    for m in running.values():
        assert m.size_vram == 0 and m.size > 0  # on the CPU: nothing in VRAM
        assert m.context_length == MAX_LEN
        assert now + dt.timedelta(minutes=4) < m.expires_at <= now + dt.timedelta(minutes=5)
    show = client.show("beta:v2")
    assert show.details.family == "llama" and show.modelinfo["llama.block_count"] == 2
    assert "<|start_header_id|>" in show.template


def test_keep_alive_zero_unloads_after_the_request(multi_server):
    client = ollama.Client(host=multi_server.url, timeout=60)
    reply = client.generate("alpha", "hi", options=OPTIONS, keep_alive=0)
    assert reply.done
    deadline = time.monotonic() + 30  # a hang guard, not a speed check
    while "alpha:latest" in [m.model for m in client.ps().models]:
        assert time.monotonic() < deadline, "alpha stayed loaded after keep_alive=0"
        time.sleep(0.05)
    metrics = multi_server.metrics()
    assert metrics['minerva_model_unloads_total{reason="expired"}'] >= 1


def test_a_created_model_serves_with_its_parameters(multi_server):
    client = ollama.Client(host=multi_server.url, timeout=60)
    client.create("alpha-greedy", from_="alpha", parameters={"temperature": 0})
    assert "alpha-greedy:latest" in [m.model for m in client.list().models]
    limit = {"num_predict": 8}
    created = client.chat("alpha-greedy", MESSAGES, options=limit)  # its default: greedy
    greedy = client.chat("alpha", MESSAGES, options={**limit, "temperature": 0})
    assert created.message.content == greedy.message.content
    client.delete("alpha-greedy")
    assert "alpha-greedy:latest" not in [m.model for m in client.list().models]
