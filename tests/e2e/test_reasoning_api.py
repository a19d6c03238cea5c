"""Reasoning models end to end: ``minerva serve --models-dir`` over three tiny random models that
differ only in their chat template (no thinking; Qwen3's, where the model opens ``<think>``;
one that opens it in the prompt, as QwQ and DeepSeek-R1), driven by the official openai and
ollama clients. A regex (vLLM's ``structured_outputs``) or a JSON-schema enum makes the real
engine write a think block token by token; the server must split it into reasoning_content /
thinking and content, streamed or not, the same way."""

from __future__ import annotations

import json
from pathlib import Path

import ollama
import openai
import pytest

from minerva.server.reasoning import split_reasoning
from tests.e2e.conftest import start_server
from tests.e2e.tiny_server_model import MODEL_NAME, build_server_model

HEAD = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif %}"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
QWEN3_STYLE = (  # the model opens <think> itself; enable_thinking=false closes it in the prompt
    HEAD + "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
OPENER_STYLE = HEAD + "<think>\n{% endif %}"  # the prompt opens it (QwQ, updated R1)
CLOSED_BLOCK = "<think>\n\n</think>\n\n"

THOUGHT, ANSWER = "add two and two", "four"
QWEN3_OUTPUT = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"
MESSAGES = [{"role": "user", "content": "What is two plus two?"}]


def _with_template(folder: Path, template: str) -> None:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("reasoning_models")
    for name, template in (("plain", None), ("qwen3ish", QWEN3_STYLE), ("opener", OPENER_STYLE)):
        folder = root / name
        folder.mkdir()
        build_server_model(folder)
        if template is not None:
            _with_template(folder, template)
    srv = start_server(root, tmp_path_factory.mktemp("logs") / "reasoning.log", models_dir=root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _forced(text: str) -> dict:
    """Request fields making the model write exactly ``text`` (a regex of plain letters)."""
    return {"structured_outputs": {"regex": text}}


def _chat(client, model: str, text: str, **extra):
    return client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=64,
        extra_body={**_forced(text), **extra},
    )  # fmt: skip


def _streamed(client, model: str, text: str, **extra) -> tuple[str, str, list]:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0, max_tokens=64, stream=True,
        extra_body={**_forced(text), **extra},
    )  # fmt: skip
    reasoning, content, deltas = [], [], []
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta.model_dump(exclude_none=True)
            deltas.append(delta)
            reasoning.append(delta.get("reasoning_content", ""))
            assert delta.get("reasoning") == delta.get("reasoning_content")
            content.append(delta.get("content", ""))
    return "".join(reasoning), "".join(content), deltas


def test_openai_message_splits_reasoning_from_content(client):
    resp = _chat(client, "qwen3ish", QWEN3_OUTPUT)
    message = resp.choices[0].message
    assert resp.choices[0].finish_reason == "stop"
    assert (message.reasoning_content, message.content) == (THOUGHT, ANSWER)
    assert message.reasoning == THOUGHT  # vLLM's newer name for the same field
    assert split_reasoning(QWEN3_OUTPUT, False) == (THOUGHT, ANSWER)  # the reference agrees


def test_openai_stream_joins_to_the_same_split_without_partial_tags(client):
    reasoning, content, deltas = _streamed(client, "qwen3ish", QWEN3_OUTPUT)
    assert (reasoning, content) == (THOUGHT, ANSWER)
    assert sum(1 for d in deltas if d.get("reasoning_content")) > 1  # it really streamed
    for d in deltas:  # the tags (several tokens each) never leak, not even in part
        assert "<" not in d.get("content", "") and "<" not in d.get("reasoning_content", "")


def test_prompt_that_opens_the_block_starts_output_in_reasoning(client):
    output = f"{THOUGHT}\n</think>\n\n{ANSWER}"
    message = _chat(client, "opener", output).choices[0].message
    assert (message.reasoning_content, message.content) == (THOUGHT, ANSWER)
    assert _streamed(client, "opener", output)[:2] == (THOUGHT, ANSWER)


def test_cut_off_while_thinking_is_all_reasoning(client):
    resp = client.chat.completions.create(
        model="opener", messages=MESSAGES, temperature=0, max_tokens=3,
        extra_body=_forced(THOUGHT),
    )  # fmt: skip
    message, choice = resp.choices[0].message, resp.choices[0]
    assert choice.finish_reason == "length"
    assert THOUGHT.startswith(message.reasoning_content) and message.reasoning_content
    assert message.content == ""


def _reference_prompt_tokens(folder: Path, messages=MESSAGES, **kwargs) -> int:
    """Prompt length of ``messages``: the template rendered by jinja2, encoded by tokenizers."""
    import jinja2
    from tokenizers import Tokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    text = (
        jinja2.Environment()
        .from_string(config["chat_template"])
        .render(messages=messages, add_generation_prompt=True, bos_token="<|begin_of_text|>",
                **kwargs)
    )  # fmt: skip
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return len(tok.encode(text, add_special_tokens=False).ids)


def _model_folder(server, name: str) -> Path:
    return Path(server.proc.args[server.proc.args.index("--models-dir") + 1]) / name


def test_chat_template_kwargs_reach_the_template(client, server):
    on = _chat(client, "qwen3ish", ANSWER)
    off = _chat(client, "qwen3ish", ANSWER, chat_template_kwargs={"enable_thinking": False})
    folder = _model_folder(server, "qwen3ish")
    assert on.usage.prompt_tokens == _reference_prompt_tokens(folder)
    assert off.usage.prompt_tokens == _reference_prompt_tokens(folder, enable_thinking=False)
    assert off.usage.prompt_tokens > on.usage.prompt_tokens  # the closed block was added
    # thinking off: no block in the output, all of it is the answer
    assert (off.choices[0].message.content, off.choices[0].message.reasoning_content) == (
        ANSWER,
        None,
    )


HISTORY = [
    *MESSAGES,
    {"role": "assistant", "content": ANSWER},
    {"role": "user", "content": "And three plus three?"},
]


def test_reasoning_sent_back_in_history_reaches_the_template(client, server):
    folder = _model_folder(server, "qwen3ish")
    for field in ("reasoning_content", "reasoning"):
        history = [*HISTORY]
        history[1] = {**history[1], field: THOUGHT}
        resp = client.chat.completions.create(model="qwen3ish", messages=history, max_tokens=1)
        with_thought = [*HISTORY]
        with_thought[1] = {**HISTORY[1], "reasoning_content": THOUGHT}
        assert resp.usage.prompt_tokens == _reference_prompt_tokens(folder, with_thought)
        assert resp.usage.prompt_tokens > _reference_prompt_tokens(folder, HISTORY)


def test_chat_template_kwargs_may_not_override_the_request(server):
    with server.client() as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "qwen3ish", "messages": MESSAGES, "max_tokens": 2,
                  "chat_template_kwargs": {"messages": []}},
        )  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "chat_template_kwargs"


def test_model_without_thinking_is_served_as_before(server):
    body = {
        "model": "plain", "messages": MESSAGES, "temperature": 0, "max_tokens": 64,
        **_forced(QWEN3_OUTPUT),
    }  # fmt: skip
    with server.client() as http:
        message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        assert message == {"role": "assistant", "content": QWEN3_OUTPUT}  # no reasoning field
        lines = http.post("/v1/chat/completions", json={**body, "stream": True}).text
    deltas = [
        json.loads(x[6:])["choices"][0]["delta"]
        for x in lines.splitlines()
        if x.startswith("data: {")
    ]
    assert all("reasoning_content" not in d for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == QWEN3_OUTPUT


def test_tool_calls_are_read_from_the_answer_only(client):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    call = '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'
    with_thought = f"<think>\n{THOUGHT}\n</think>\n\n{call}"
    regex = with_thought.replace("{", "\\{").replace("}", "\\}")
    resp = client.chat.completions.create(
        model="qwen3ish", messages=MESSAGES, temperature=0, max_tokens=80, tools=tools,
        extra_body=_forced(regex),
    )  # fmt: skip
    message = resp.choices[0].message
    assert message.reasoning_content == THOUGHT
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [("add", "{}")]
    assert resp.choices[0].finish_reason == "tool_calls"


# -- Ollama ------------------------------------------------------------------------------------
# Ollama's format takes only JSON schemas: an enum of one string makes the model write it, in
# JSON quotes, and the "opener" model's prompt has opened the block already.
OLLAMA_OUTPUT = f'"{THOUGHT}</think>{ANSWER}"'
OLLAMA_FORMAT = {"type": "string", "enum": [f"{THOUGHT}</think>{ANSWER}"]}
OLLAMA_SPLIT = split_reasoning(OLLAMA_OUTPUT, True)


def test_ollama_split_reference():
    assert OLLAMA_SPLIT == (f'"{THOUGHT}', f'{ANSWER}"')


@pytest.fixture(scope="module")
def ollama_client(server):
    return ollama.Client(host=server.url)


@pytest.mark.parametrize("think", [True, None, "high"])
def test_ollama_chat_thinking(ollama_client, think):
    kwargs = {"model": "opener", "messages": MESSAGES, "format": OLLAMA_FORMAT}
    kwargs |= {"options": {"temperature": 0, "num_predict": 64}, "think": think}
    resp = ollama_client.chat(**kwargs)
    assert (resp.message.thinking, resp.message.content) == OLLAMA_SPLIT
    parts = list(ollama_client.chat(**kwargs, stream=True))
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content or "" for p in parts)
    assert (thinking, content) == OLLAMA_SPLIT
    assert parts[-1].done


def test_ollama_generate_thinking(ollama_client):
    kwargs = {"model": "opener", "prompt": "What is two plus two?", "format": OLLAMA_FORMAT}
    kwargs |= {"options": {"temperature": 0, "num_predict": 64}, "think": True}
    resp = ollama_client.generate(**kwargs)
    assert (resp.thinking, resp.response) == OLLAMA_SPLIT
    parts = list(ollama_client.generate(**kwargs, stream=True))
    assert (
        "".join(p.thinking or "" for p in parts),
        "".join(p.response for p in parts),
    ) == OLLAMA_SPLIT
    raw = ollama_client.generate(**{**kwargs, "think": None}, raw=True)  # raw: left whole
    assert (raw.thinking, raw.response) == (None, OLLAMA_OUTPUT)


def test_ollama_think_false_switches_thinking_off_in_the_template(ollama_client, server):
    options = {"temperature": 0, "num_predict": 8}
    kwargs = {"model": "qwen3ish", "messages": MESSAGES, "options": options, "format": "json"}
    on = ollama_client.chat(**kwargs, think=True)
    off = ollama_client.chat(**kwargs, think=False)
    folder = _model_folder(server, "qwen3ish")
    assert on.prompt_eval_count == _reference_prompt_tokens(folder, enable_thinking=True)
    assert off.prompt_eval_count == _reference_prompt_tokens(folder, enable_thinking=False)
    assert off.message.thinking is None  # JSON output: no block, all content


def test_ollama_thinking_in_history_reaches_the_template(ollama_client, server):
    history = [*HISTORY]
    history[1] = {**history[1], "thinking": THOUGHT}
    resp = ollama_client.chat(model="qwen3ish", messages=history, options={"num_predict": 1})
    with_thought = [*HISTORY]
    with_thought[1] = {**HISTORY[1], "reasoning_content": THOUGHT}
    folder = _model_folder(server, "qwen3ish")
    assert resp.prompt_eval_count == _reference_prompt_tokens(folder, with_thought)


def test_ollama_think_on_a_model_without_thinking_is_refused(ollama_client, server):
    with pytest.raises(ollama.ResponseError) as e:
        ollama_client.chat(model="plain", messages=MESSAGES, think=True)
    assert e.value.status_code == 400 and "does not support thinking" in str(e.value)
    # think false (or absent) on it is accepted and changes nothing
    resp = ollama_client.chat(
        model="plain", messages=MESSAGES, think=False, options={"num_predict": 2}
    )
    assert resp.message.thinking is None
    with server.client() as http:
        r = http.post("/api/chat", json={"model": "plain", "messages": MESSAGES, "think": "max"})
    assert r.status_code == 400


def test_ollama_show_lists_the_thinking_capability(ollama_client):
    assert "thinking" in ollama_client.show("qwen3ish").capabilities
    assert "thinking" not in ollama_client.show("plain").capabilities


def test_plain_http_non_ollama_clients_see_no_thinking_key(server):
    with server.client() as http:
        r = http.post(
            "/api/chat",
            json={"model": "plain", "messages": MESSAGES, "stream": False,
                  "options": {"num_predict": 2}},
        )  # fmt: skip
    assert "thinking" not in r.json()["message"]


def test_parser_chosen_on_the_command_line(model_dir, tmp_path):
    """``--reasoning-parser deepseek_r1`` on a model whose template knows no thinking: its
    output starts inside the reasoning (R1 distills need not write <think>)."""
    srv = start_server(model_dir, tmp_path / "r1.log", "--reasoning-parser", "deepseek_r1")
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
        output = f"{THOUGHT}</think>{ANSWER}"
        resp = client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=64,
            extra_body=_forced(output),
        )  # fmt: skip
        message = resp.choices[0].message
        assert (message.reasoning_content, message.content) == (THOUGHT, ANSWER)
        assert split_reasoning(output, True) == (THOUGHT, ANSWER)
        show = ollama.Client(host=srv.url).show(MODEL_NAME)
        assert "thinking" in show.capabilities
    finally:
        srv.stop()
