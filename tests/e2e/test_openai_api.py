"""The official ``openai`` client against ``minerva serve``: models, chat and completions,
streaming shapes, usage counts against the tokenizer, seeds, logprobs, prefix-cache hits."""

from __future__ import annotations

import math
import re

import openai
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.tiny_server_model import MODEL_NAME, reference_chat_ids, reference_ids

BLOCK_SIZE = 16  # the engine's default KV block size


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello world! How are you today?"},
]


@pytest.fixture(scope="module")
def n_prompt(model_dir) -> int:
    """Prompt tokens of MESSAGES by the reference tokenizer."""
    return len(reference_chat_ids(model_dir, MESSAGES))


def test_chat_stream_equals_non_stream_with_exact_usage(client, n_prompt):
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kwargs, logprobs=True)
    choice = full.choices[0]
    assert full.object == "chat.completion" and choice.message.role == "assistant"
    assert full.usage.prompt_tokens == n_prompt
    # One logprob entry per generated token: completion_tokens counts exactly those.
    assert full.usage.completion_tokens == len(choice.logprobs.content)
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "length":
        assert full.usage.completion_tokens == 12

    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == choice.message.content
    reasons = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert reasons == [choice.finish_reason]
    assert body[-1].choices[0].finish_reason == choice.finish_reason  # finish comes last
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens


def test_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=3, temperature=0, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_chat_n_and_max_completion_tokens(client, n_prompt):
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, n=3, max_completion_tokens=5, seed=1,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in out.choices)
    assert out.usage.completion_tokens == 15
    assert out.usage.prompt_tokens == n_prompt


def test_seeded_sampling_is_reproducible(client):
    def sample(seed: int) -> str:
        out = client.completions.create(
            model=MODEL_NAME, prompt="The quick brown fox", max_tokens=16, temperature=1.0,
            seed=seed, extra_body={"ignore_eos": True},
        )  # fmt: skip
        return out.choices[0].text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_completions_batch_n_usage_and_stream(client, model_dir):
    prompts = ["Hello world", "Streaming text one token at a time"]
    kwargs = dict(model=MODEL_NAME, prompt=prompts, max_tokens=4, temperature=0, n=2)
    out = client.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert out.object == "text_completion"
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.prompt_tokens == sum(len(reference_ids(model_dir, p)) for p in prompts)
    assert out.usage.completion_tokens == 4 * 4
    texts = {c.index: c.text for c in out.choices}
    assert texts[0] == texts[1] and texts[2] == texts[3]  # greedy: n copies agree

    streamed: dict[int, str] = {}
    chunks = list(client.completions.create(**kwargs, stream=True, extra_body={"ignore_eos": True}))
    for chunk in chunks:
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == texts
    finished = [c.index for ch in chunks for c in ch.choices if c.finish_reason == "length"]
    assert sorted(finished) == [0, 1, 2, 3]


def test_logprobs_are_consistent_at_temperature_zero(client):
    out = client.completions.create(
        model=MODEL_NAME, prompt=[1, 2, 3, 50, 60], max_tokens=5, temperature=0, logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 3  # keyed by text: two ids may decode alike
        assert value == pytest.approx(max(top.values()), abs=1e-5)  # greedy takes the top one
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    for item in chat.choices[0].logprobs.content:
        assert len(item.top_logprobs) == 2
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


def test_repeated_long_prompt_hits_the_prefix_cache(client):
    prompt = [(7 * i + 11) % 400 + 5 for i in range(45)]  # 45 ids no other test sends
    first = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # Every full block but the one holding the last prompt token (it must run for logits).
    expected = (len(prompt) - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert second.usage.prompt_tokens_details.cached_tokens == expected == 32
    assert second.choices[0].text == first.choices[0].text


def test_error_classes(client, n_prompt):
    def chat(**kwargs):
        return client.chat.completions.create(
            **{"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4, **kwargs}
        )

    with pytest.raises(openai.NotFoundError) as e:
        chat(model="gpt-4")
    assert e.value.code == "model_not_found"
    for bad in (
        {"temperature": 5},
        {"n": 0},
        {"max_tokens": -1},
        {"top_p": 0},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "strin"}},
            }
        },
    ):
        with pytest.raises(openai.BadRequestError):
            chat(**bad)
    with pytest.raises(openai.BadRequestError) as e:
        chat(functions=[{"name": "f"}])
    assert e.value.code == "unsupported_field" and "functions" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        chat(max_tokens=10_000)
    assert e.value.code == "context_length_exceeded"
    assert "2048" in e.value.message and f"{n_prompt} in the prompt" in e.value.message


def test_stop_strings_cut_the_text(client):
    kwargs = dict(model=MODEL_NAME, prompt="Hello world", max_tokens=24, temperature=0)
    full = client.completions.create(**kwargs, extra_body={"ignore_eos": True}).choices[0].text
    match = re.search(r"[A-Za-z]{3}", full)  # an ASCII run: decodes the same at any cut
    assert match, full
    stop = match.group()
    cut = client.completions.create(**kwargs, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    kept = client.completions.create(
        **kwargs, stop=stop, extra_body={"ignore_eos": True, "include_stop_str_in_output": True}
    )
    assert kept.choices[0].text == full[: full.index(stop) + len(stop)]


def test_harmless_fields_are_accepted_and_images_get_a_plain_400(client):
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=3, temperature=0, modalities=["text"],
        user="u-1", metadata={"app": "test"}, store=False, service_tier="auto",
    )  # fmt: skip
    assert out.choices[0].message.content
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    parts = [{"type": "text", "text": "What is this?"}, image]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": parts}], max_tokens=3
        )
    assert e.value.code == "unsupported_content" and e.value.body["param"] == "messages.0.content.1"
    assert "images are not supported by this model" in e.value.message
    assert len(e.value.message) < 200  # one sentence, not a dump of the content union
    with pytest.raises(openai.BadRequestError, match="modalities other than text"):
        client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=3, modalities=["text", "audio"]
        )
