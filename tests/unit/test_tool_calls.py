"""Tool calls through the server over a scripted backend: the real openai and ollama clients
see OpenAI's message and stream-delta shapes (and Ollama's), tool_choice "none" never yields a
call, and each family's parser reads what its grammar allows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import ollama
import openai
import pytest

from minerva.backends.base import CompletionOutput, RequestOutput
from minerva.server.app import build_app
from minerva.server.config import ServerConfig
from minerva.server.tool_calls import ToolCallStream, tool_plan
from minerva.server.tool_parsers import PARSERS, parser_for_template
from tests.unit.test_server_fake_backend import FakeBackend

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class ScriptedBackend(FakeBackend):
    """Answers every request with ``script`` (a list of text pieces, one per token)."""

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = script
        self.template_calls: list[tuple[list[dict], list[dict] | None]] = []

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None):
        self.template_calls.append((messages, tools))
        return [1, 2, 3]

    async def add_request(
        self, prompt, params, request_id=None, prompt_token_ids=None, arrival_time=None, stream=True
    ):
        self.requests.append((prompt_token_ids, params))
        return _ScriptStream(request_id or "x", self.script)


class _ScriptStream:
    def __init__(self, request_id: str, script: list[str]) -> None:
        self.request_id, self.script = request_id, script

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        comp = CompletionOutput(index=0)
        for i, piece in enumerate(self.script):
            await asyncio.sleep(0)
            comp.token_ids.append(1)
            comp.text += piece
            comp.delta_text, comp.delta_token_ids = piece, [1]
            last = i + 1 == len(self.script)
            comp.finish_reason = "stop" if last else None
            yield RequestOutput(self.request_id, None, [1, 2, 3], [comp], finished=last)

    def abort(self) -> None:
        pass


def _serve(script: list[str], fn):
    backend = ScriptedBackend(script)
    app = build_app(ServerConfig(served_model_name="fake"), backend=backend)

    async def main():
        async with app.router.lifespan_context(app):
            return await fn(httpx.ASGITransport(app=app))

    return asyncio.run(main()), backend


def _openai(transport) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=transport)
    return openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="x", http_client=http)


MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
PIECES = [CALL_TEXT[i : i + 7] for i in range(0, len(CALL_TEXT), 7)]


def test_auto_returns_tool_calls_with_ids_and_json_arguments():
    async def check(transport):
        return await _openai(transport).chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS
        )

    reply, backend = _serve(PIECES, check)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    params = backend.requests[0][1]
    assert params.structured is None  # auto: free generation, parsed afterwards
    # The fake's template ignores tools: they are described in a system message instead.
    messages, tools = backend.template_calls[0]
    assert tools is None and messages[0]["role"] == "system"
    assert "get_weather" in messages[0]["content"]


def test_streamed_tool_call_has_the_openai_delta_shape():
    async def check(transport):
        http = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        body = {"model": "fake", "messages": MESSAGES, "tools": TOOLS, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
        stream = await _openai(transport).chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS, stream=True
        )
        return lines, [c async for c in stream]

    (lines, chunks), _ = _serve(PIECES, check)
    assert lines[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:])["choices"][0] for line in lines[:-1]]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    head, args, end = deltas[1], deltas[2], deltas[3]
    call_id = head["delta"]["tool_calls"][0]["id"]
    assert head["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    assert args["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]
    }
    assert end == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert len(deltas) == 4  # nothing of the call text leaked out as content
    # The official client parses the same stream.
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert "".join(c.function.arguments for c in calls) == '{"city": "Paris"}'


def test_tool_choice_none_never_emits_a_call():
    async def check(transport):
        client = _openai(transport)
        whole = await client.chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS, tool_choice="none"
        )
        stream = await client.chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS, tool_choice="none", stream=True
        )
        return whole, [c async for c in stream]

    (whole, chunks), backend = _serve(PIECES, check)
    assert whole.choices[0].message.tool_calls is None
    assert whole.choices[0].message.content == CALL_TEXT  # the same text auto turns into a call
    assert whole.choices[0].finish_reason == "stop"
    assert all(c.choices[0].delta.tool_calls is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == CALL_TEXT
    for messages, tools in backend.template_calls:
        assert tools is None and messages[0]["role"] == "user"  # no tool description either


def test_plain_text_with_tools_streams_as_content():
    text = ["The", " weather", " is", " fine"]

    async def check(transport):
        stream = await _openai(transport).chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS, stream=True
        )
        return [c async for c in stream]

    chunks, _ = _serve(text, check)
    contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert contents == text  # not held back: it cannot start a call
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_required_and_named_choices_constrain_generation():
    async def check(transport):
        client = _openai(transport)
        await client.chat.completions.create(
            model="fake", messages=MESSAGES, tools=TOOLS, tool_choice="required"
        )
        await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )

    _, backend = _serve(PIECES, check)
    required, named = (p.structured.grammar for _, p in backend.requests)
    assert "get_weather" in required and "get_time" in required
    assert "get_time" in named and "get_weather" not in named


@pytest.mark.parametrize(
    "body, message",
    [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "letters, digits"),
        ({"tools": [{"type": "function", "function": {"name": "a\n"}}]}, "letters, digits"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}}, "x"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        (
            {
                "tools": TOOLS,
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "cannot be combined",
        ),
        ({"response_format": {"type": "yaml"}}, "not supported"),
        ({"response_format": {"type": "json_schema"}}, '"name"'),
    ],
)
def test_bad_tool_and_format_fields_are_400s(body, message):
    async def check(transport):
        with pytest.raises(openai.BadRequestError) as e:
            await _openai(transport).chat.completions.create(
                model="fake", messages=MESSAGES, **body
            )
        return e.value

    error, _ = _serve(PIECES, check)
    assert message in error.message


def test_ollama_chat_returns_message_tool_calls():
    async def check(transport):
        client = ollama.AsyncClient(host="http://localhost", transport=transport)
        whole = await client.chat("fake", messages=MESSAGES, tools=TOOLS)
        parts = [
            c async for c in await client.chat("fake", messages=MESSAGES, tools=TOOLS, stream=True)
        ]
        return whole, parts

    (whole, parts), _ = _serve(PIECES, check)
    (call,) = whole.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    streamed = [tc for p in parts for tc in (p.message.tool_calls or [])]
    assert [c.function.name for c in streamed] == ["get_weather"]
    assert "".join(p.message.content or "" for p in parts) == ""


@pytest.mark.parametrize(
    "template, text",
    [
        ("{{ '<tool_call>' }}", CALL_TEXT),
        ("<|python_tag|>", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
        ("[TOOL_CALLS]", '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    ],
)
def test_each_family_parses_its_own_format(template, text):
    parser = parser_for_template(template)
    out = parser.parse(text, {"get_weather", "get_time"})
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert parser.parse("just text", {"get_weather"}).tool_calls == []
    assert parser.parse(text.replace("get_weather", "unknown"), {"get_weather"}).tool_calls == []


def test_streaming_holds_back_only_what_may_be_a_call():
    plan = tool_plan(TOOLS, "auto", None, None)
    stream = ToolCallStream(plan)
    assert stream.feed("<tool") == "" and stream.feed("_call>\n{") == ""
    stream = ToolCallStream(plan)
    assert stream.feed("<b>") == "<b>" and stream.feed(" more") == " more"
    assert stream.finish() == ("", [])


def test_parsers_registry_names_every_family():
    assert set(PARSERS) == {"hermes", "llama3", "mistral"}
