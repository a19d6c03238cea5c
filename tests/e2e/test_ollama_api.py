"""The official ``ollama`` client against ``minerva serve``: generate and chat (streaming and
not), list, show, ps, version, ``GET /``, errors, and the nanosecond timings."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.e2e.tiny_server_model import MAX_LEN, MODEL_NAME, reference_chat_ids, reference_ids

OPTIONS = {"num_predict": 8, "temperature": 0, "seed": 3}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=server.headers, timeout=60)


def test_root_and_version(server):
    r = httpx.get(server.url + "/", headers=server.headers)
    assert r.status_code == 200 and r.text == "Ollama is running"
    version = httpx.get(server.url + "/api/version", headers=server.headers).json()["version"]
    assert all(part.isdigit() for part in version.split("."))


def test_list_show_ps(client):
    (model,) = client.list().models
    assert model.model == MODEL_NAME and model.size > 0 and model.details.family == "llama"
    show = client.show(MODEL_NAME)
    assert show.details.family == "llama" and show.details.quantization_level == "FLOAT32"
    assert show.modelinfo["llama.context_length"] == MAX_LEN
    assert show.modelinfo["llama.block_count"] == 2
    assert "<|start_header_id|>" in show.template  # the model's chat template
    assert client.show(f"{MODEL_NAME}:latest").details.family == "llama"
    (running,) = client.ps().models
    assert running.model == MODEL_NAME and running.context_length == MAX_LEN


def test_generate_stream_equals_non_stream_with_counts_and_timings(client, model_dir):
    prompt = "Why is the sky blue?"
    full = client.generate(MODEL_NAME, prompt, options=OPTIONS)
    assert full.done and full.done_reason in ("stop", "length")
    # Not raw: the prompt goes through the chat template as one user message.
    n_prompt = len(reference_chat_ids(model_dir, [{"role": "user", "content": prompt}]))
    assert full.prompt_eval_count == n_prompt
    assert 1 <= full.eval_count <= 8 and (full.eval_count == 8) == (full.done_reason == "length")
    assert len(full.context) == n_prompt + full.eval_count
    for name in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(full[name], int) and full[name] > 0, name
    assert full.total_duration >= full.prompt_eval_duration + full.eval_duration
    assert full.load_duration == 0

    parts = list(client.generate(MODEL_NAME, prompt, options=OPTIONS, stream=True))
    *body, last = parts
    assert not any(p.done for p in body) and last.done and last.response == ""
    assert "".join(p.response for p in body) == full.response
    assert last.eval_count == full.eval_count and last.done_reason == full.done_reason
    assert last.context == full.context


def test_generate_system_raw_and_context(client, model_dir):
    with_system = client.generate(MODEL_NAME, "hi", system="Be brief.", options=OPTIONS)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert with_system.prompt_eval_count == len(reference_chat_ids(model_dir, messages))
    raw = client.generate(MODEL_NAME, "hi", raw=True, options=OPTIONS)
    assert raw.prompt_eval_count == len(reference_ids(model_dir, "hi"))  # no template
    follow = client.generate(MODEL_NAME, "more", raw=True, context=raw.context, options=OPTIONS)
    assert follow.context[: len(raw.context)] == raw.context


def test_chat_stream_equals_non_stream(client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat(MODEL_NAME, messages=messages, options=OPTIONS)
    assert full.message.role == "assistant" and full.done
    parts = list(client.chat(MODEL_NAME, messages=messages, options=OPTIONS, stream=True))
    assert "".join(p.message.content for p in parts) == full.message.content
    assert parts[-1].done and parts[-1].eval_count == full.eval_count


def test_seed_and_sampling_options(client):
    opts = {"num_predict": 12, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "min_p": 0.01,
            "repeat_penalty": 1.1}  # fmt: skip
    a = client.generate(MODEL_NAME, "Numbers", options={**opts, "seed": 11})
    b = client.generate(MODEL_NAME, "Numbers", options={**opts, "seed": 11})
    c = client.generate(MODEL_NAME, "Numbers", options={**opts, "seed": 12})
    assert a.response == b.response and a.context != c.context


def test_logprobs(client):
    out = client.generate(MODEL_NAME, "hi", options=OPTIONS, logprobs=True, top_logprobs=2)
    assert len(out.logprobs) == out.eval_count
    for lp in out.logprobs:
        assert len(lp.top_logprobs) == 2 and lp.logprob == pytest.approx(lp.top_logprobs[0].logprob)


def test_errors(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("no-such-model", "hi")
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(MODEL_NAME, "a prompt longer than four tokens", options={"num_ctx": 4})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        messages = [{"role": "user", "content": "x"}]
        list(client.chat(MODEL_NAME, messages=messages, format={"type": "strin"}, stream=True))
    assert e.value.status_code == 400


def test_empty_prompt_loads_like_ollama(client):
    out = client.generate(MODEL_NAME, "")
    assert out.done and out.done_reason == "load" and out.response == ""
