"""What the request fields about thinking become: Ollama's ``think`` (on / off / levels, a 400
on a model without thinking) and OpenAI's ``chat_template_kwargs``, as chat template
variables."""

from __future__ import annotations

import pytest

from minerva.errors import RequestError
from minerva.server.ollama_protocol import ChatRequest
from minerva.server.openai_protocol import ChatCompletionRequest

MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("think", "parser", "kwargs"),
    [
        (None, "qwen3", {}),  # absent: the template's own default (Qwen3: thinking on)
        (True, "qwen3", {"enable_thinking": True}),
        (False, "qwen3", {"enable_thinking": False}),
        ("high", "qwen3", {"enable_thinking": True}),  # gpt-oss levels read as on
        ("low", "deepseek_r1", {"enable_thinking": True}),
        (False, None, {}),  # off on a model without thinking: nothing to switch
        (None, None, {}),
    ],
)
def test_ollama_think_as_template_variables(think, parser, kwargs):
    body = ChatRequest.model_validate({"model": "m", "messages": MSGS, "think": think})
    body.check_supported()
    assert body.template_kwargs(parser) == kwargs


def test_ollama_think_on_a_model_without_thinking_is_a_400():
    body = ChatRequest.model_validate({"model": "tiny", "messages": MSGS, "think": True})
    with pytest.raises(RequestError, match="'tiny' does not support thinking"):
        body.template_kwargs(None)


def test_ollama_think_refuses_other_strings():
    body = ChatRequest.model_validate({"model": "m", "messages": MSGS, "think": "max"})
    with pytest.raises(RequestError) as e:
        body.check_supported()
    assert e.value.param == "think"


def test_openai_chat_template_kwargs():
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MSGS, "chat_template_kwargs": {"enable_thinking": False}}
    )
    assert body.template_kwargs() == {"enable_thinking": False}
    plain = ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS})
    assert plain.template_kwargs() == {}
    for reserved in ("messages", "tools", "add_generation_prompt", "chat_template"):
        body = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": MSGS, "chat_template_kwargs": {reserved: None}}
        )
        with pytest.raises(RequestError) as e:
            body.template_kwargs()
        assert e.value.param == "chat_template_kwargs"


def test_reasoning_in_history_reaches_the_template_as_reasoning_content():
    for field in ("reasoning_content", "reasoning"):
        body = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "assistant", "content": "4", field: "2+2"}]}
        )
        assert body.messages[0].plain()["reasoning_content"] == "2+2"
    ollama_body = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "assistant", "content": "4", "thinking": "2+2"}]}
    )
    assert ollama_body.messages[0].plain()["thinking"] == "2+2"
