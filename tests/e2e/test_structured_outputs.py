"""Structured outputs and tool calls end to end: ``minerva serve`` on the demo model, driven by
the official openai and ollama clients. Seeded samples at temperature 1.0 validate against
their JSON schema (jsonschema); forced tool calls parse and stream in OpenAI's delta shape."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from minerva.demo import demo_model_path
from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MODEL_NAME

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 8},
            "minItems": 1,
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "integer", "minimum": 1000, "maximum": 99999},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "score", "role", "tags", "address"],
    "additionalProperties": False,
}
POINTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "x": {"type": "integer", "minimum": -9, "maximum": 9},
            "ok": {"type": "boolean"},
        },
        "required": ["x", "ok"],
        "additionalProperties": False,
    },
    "minItems": 1,
    "maxItems": 4,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 10},
                    "unit": {"enum": ["C", "F"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"enum": ["UTC", "CET"]}},
                "required": ["tz"],
                "additionalProperties": False,
            },
        },
    },
]
MESSAGES = [{"role": "user", "content": "Describe it as JSON."}]
NUM_SAMPLES = 8  # per schema and request (n=): seeded children, one batch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(demo_model_path(), tmp_path_factory.mktemp("logs") / "structured.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


def _response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}


@pytest.mark.parametrize("schema", [PERSON, POINTS], ids=["nested_object", "array_of_objects"])
def test_seeded_samples_validate_against_the_schema(client, schema):
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=MESSAGES,
        response_format=_response_format(schema),
        temperature=1.0,
        seed=1234,
        n=NUM_SAMPLES,
        max_tokens=200,
    )
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # temperature 1.0 really samples
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_streamed_json_object_and_same_seed_same_text(client):
    kwargs = dict(
        model=MODEL_NAME,
        messages=MESSAGES,
        response_format={"type": "json_object"},
        temperature=1.0,
        seed=7,
        max_tokens=150,
    )
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole.choices[0].message.content
    if whole.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(streamed), dict)
    else:  # cut by max_tokens: still the start of an object
        assert streamed.startswith("{")


def test_completions_endpoint_takes_response_format(client):
    reply = client.completions.create(
        model=MODEL_NAME,
        prompt="Points:",
        extra_body={"response_format": _response_format(POINTS)},
        temperature=1.0,
        seed=3,
        max_tokens=120,
    )
    jsonschema.validate(json.loads(reply.choices[0].text), POINTS)


@pytest.mark.parametrize(
    "tool_choice, names",
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
)
def test_forced_tool_calls_parse_and_match_their_schema(client, tool_choice, names):
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "What is the weather?"}],
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        temperature=1.0,
        seed=11,
        n=4,
        max_tokens=120,
    )
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name in names and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_streamed_forced_tool_call_is_openai_shaped(client):
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Time?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=1.0,
        seed=5,
        max_tokens=80,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    first, head, args, last = chunks[0], chunks[1], chunks[2], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content is None
    (call,) = head.choices[0].delta.tool_calls
    assert (call.index, call.type, call.function.name, call.function.arguments) == (
        0,
        "function",
        "get_time",
        "",
    )
    assert call.id.startswith("call_")
    (more,) = args.choices[0].delta.tool_calls
    assert more.index == 0 and more.id is None and more.function.name is None
    assert json.loads(more.function.arguments)["tz"] in ("UTC", "CET")
    assert last.choices[0].finish_reason == "tool_calls" and len(chunks) == 4


def test_invalid_schemas_are_400s_naming_the_problem(client):
    cases = [
        (_response_format({"type": "strin"}), "strin"),
        (_response_format({"type": "object", "if": {"type": "object"}}), "if"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "name"),
    ]
    for response_format, word in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model=MODEL_NAME, messages=MESSAGES, response_format=response_format
            )
        assert word in e.value.message and e.value.param == "response_format"
    # Without strict, keywords the engine cannot enforce are ignored instead.
    lenient = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object", "if": {}}},
    }
    client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, response_format=lenient, max_tokens=5
    )


def test_ollama_format_schema_and_json(server):
    client = ollama.Client(host=server.url, timeout=120)
    for seed in range(3):
        reply = client.chat(
            MODEL_NAME,
            messages=MESSAGES,
            format=POINTS,
            options={"temperature": 1.0, "seed": seed, "num_predict": 120},
        )
        jsonschema.validate(json.loads(reply.message.content), POINTS)
    generated = client.generate(
        MODEL_NAME, "JSON:", format="json", options={"seed": 1, "num_predict": 60}
    )
    assert generated.response.startswith("{")
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(MODEL_NAME, messages=MESSAGES, format={"type": "strin"})
    assert "strin" in str(e.value)


def test_token_healing_extension_backs_up_the_prompt(client):
    kwargs = dict(model=MODEL_NAME, prompt="def hello_wor", max_tokens=4, temperature=0)
    plain = client.completions.create(**kwargs)
    healed = client.completions.create(**kwargs, extra_body={"token_healing": True})
    assert healed.usage.prompt_tokens < plain.usage.prompt_tokens
    assert not healed.choices[0].text.startswith("wor")  # the backed-up text is not repeated
