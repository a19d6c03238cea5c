"""Ollama routes: /api/generate, /api/chat (NDJSON streams), /api/tags, /api/show, /api/ps,
/api/version and ``GET /``. Durations are nanoseconds, as Ollama reports them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from minerva.backends.base import Backend, OutputStream, RequestOutput
from minerva.server.api_errors import APIError, to_api_error
from minerva.server.fim import fim_prompts
from minerva.server.generation import (
    add_prompts,
    admission,
    check_prompt_bytes,
    collect,
    encode_chat,
    encode_prompts,
    finite,
    merge_streams,
    model_defaults,
    read_json_object,
    until_disconnect,
)
from minerva.server.keep_alive import parse_keep_alive
from minerva.server.model_listing import (
    ListedModel,
    from_info,
    list_models,
    model_info_for,
    running_models,
)
from minerva.server.ollama_protocol import OLLAMA_API_VERSION, ChatRequest, GenerateRequest
from minerva.server.openai_protocol import check_token_ids
from minerva.server.openai_responses import token_text
from minerva.server.reasoning import (
    ReasoningStream,
    reasoning_start,
    resolve_parser,
    split_reasoning,
)
from minerva.server.state import get_state
from minerva.server.tool_calls import (
    ToolCallStream,
    ToolPlan,
    ollama_tool_calls,
    tool_plan,
    with_tool_prompt,
)

router = APIRouter()


def _now() -> str:
    return (
        dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def _ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


@router.get("/")
@router.head("/")
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.get("/api/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": OLLAMA_API_VERSION})


# -- model listing ---------------------------------------------------------------------------
def _details(m: ListedModel) -> dict:
    return {
        "parent_model": "",
        "format": m.format,
        "family": m.family,
        "families": [m.family] if m.family else None,
        "parameter_size": _human(m.parameter_count) if m.parameter_count else "",
        "quantization_level": m.quantization,
    }


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()


def _model_entry(m: ListedModel) -> dict:
    return {
        "name": m.name,
        "model": m.name,
        "modified_at": _stamp(m.modified_at),
        "size": m.size,
        "digest": m.digest,
        "details": _details(m),
    }


@router.get("/api/tags")
async def tags(request: Request) -> JSONResponse:
    models = await list_models(get_state(request))
    return JSONResponse({"models": [_model_entry(m) for m in models]})


@router.get("/api/ps")
async def ps(request: Request) -> JSONResponse:
    entries = []
    for r in await running_models(get_state(request)):
        entry = _model_entry(r.listed)
        entry.update(size=r.size, size_vram=r.size_vram, context_length=r.listed.context_length)
        if r.loading:
            entry["loading"] = True  # Minerva's: a load in progress, not yet serving
        else:
            entry["expires_at"] = _stamp(r.expires_at)
        entries.append(entry)
    return JSONResponse({"models": entries})


@router.post("/api/show")
async def show(request: Request) -> JSONResponse:
    state = get_state(request)
    data = await read_json_object(request)
    name = data.get("model") or data.get("name")
    if not isinstance(name, str):
        raise APIError(400, "'model' must be given as a string", param="model")
    backend = await state.backend_for(request, name)
    info = await model_info_for(state, backend, name)
    listed = from_info(state.response_name(name), info, state.created)
    family = info.family
    return JSONResponse(
        {
            "license": "",
            "modelfile": f"# Served by Minerva\nFROM {info.source or state.model_name}\n",
            "parameters": "",
            "template": backend.chat_template or "",
            "details": _details(listed),
            "model_info": {
                "general.architecture": family,
                "general.parameter_count": info.parameter_count,
                f"{family}.context_length": info.context_length,
                f"{family}.embedding_length": info.hidden_size,
                f"{family}.block_count": info.num_layers,
                f"{family}.attention.head_count": info.num_attention_heads,
                f"{family}.attention.head_count_kv": info.num_kv_heads,
                f"{family}.vocab_size": info.vocab_size,
            },
            "capabilities": _capabilities(state, backend),
            "modified_at": _stamp(listed.modified_at),
        }
    )


def _capabilities(state, backend: Backend) -> list[str]:
    """Ollama's capability names: "thinking" for a model whose reasoning this server splits."""
    thinks = resolve_parser(state.config.reasoning_parser, backend.chat_template) is not None
    return ["completion", "thinking"] if thinks else ["completion"]


# -- generation ------------------------------------------------------------------------------
@router.post("/api/generate")
async def generate(request: Request) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    body = GenerateRequest.model_validate(await read_json_object(request))
    body.check_supported()
    if not body.prompt and not body.context:  # Ollama: an empty prompt just loads the model
        return JSONResponse(await _load_only(request, state, body, "response"))
    check_prompt_bytes(state, "prompt", body.prompt, body.system, body.suffix)
    backend = await state.backend_for(request, body.model, body.keep_alive)
    parser = resolve_parser(state.config.reasoning_parser, backend.chat_template)
    templated = not (body.suffix or body.raw or not backend.has_tokenizer)
    templated = templated and backend.chat_template is not None
    # Raw and fill-in-the-middle prompts are the caller's own: their output is left whole.
    template_kwargs = body.template_kwargs(parser) if templated else {}
    parser = parser if templated else None

    async def encode() -> list[int]:
        prompt = body.prompt or ""
        if body.suffix:  # fill-in-the-middle: the model's FIM template, no chat template
            (text,) = await asyncio.to_thread(fim_prompts, backend, [prompt], body.suffix)
            ids = (await encode_prompts(backend, [text]))[0]
        elif not templated:
            ids = (await encode_prompts(backend, [prompt]))[0]
        else:
            messages = [{"role": "system", "content": body.system}] if body.system else []
            messages.append({"role": "user", "content": prompt})
            ids = await encode_chat(backend, messages, True, None, template_kwargs)
        return list(body.context or []) + ids

    return await _run(request, state, backend, body, encode, arrival, False, parser=parser)


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    body = ChatRequest.model_validate(await read_json_object(request))
    body.check_supported()
    if not body.messages:
        return JSONResponse(await _load_only(request, state, body, "message"))
    backend = await state.backend_for(request, body.model, body.keep_alive)
    template = backend.chat_template
    plan = tool_plan(body.tools, None, None, template)
    messages = with_tool_prompt([m.plain() for m in body.messages], plan, template)
    template_tools = plan.template_tools(template) if plan is not None else None
    check_prompt_bytes(state, "messages", messages, template_tools)
    parser = resolve_parser(state.config.reasoning_parser, template)
    template_kwargs = body.template_kwargs(parser)

    async def encode() -> list[int]:
        return await encode_chat(backend, messages, True, template_tools, template_kwargs)

    return await _run(request, state, backend, body, encode, arrival, True, plan, parser)


async def _load_only(request, state, body, key: str) -> dict:
    """Ollama's request without a prompt: load the model, or unload it with keep_alive 0."""
    reason = "load"
    if state.registry is not None and parse_keep_alive(body.keep_alive, -1.0) == 0:
        state.registry.find(body.model)  # 404 for an unknown name
        await state.registry.unload(body.model)
        reason = "unload"
    else:
        await state.backend_for(request, body.model, body.keep_alive)
    value = {"role": "assistant", "content": ""} if key == "message" else ""
    return {
        "model": body.model, "created_at": _now(), key: value, "done": True, "done_reason": reason,
    }  # fmt: skip


async def _run(
    request,
    state,
    backend,
    body,
    encode,
    arrival: float,
    chat: bool,
    plan: ToolPlan | None = None,
    parser: str | None = None,
) -> Response:
    """``parser``: the model's reasoning parser (None: the output is all content)."""
    request_id = f"ollama-{uuid.uuid4().hex}"
    thinking: list[bool] = []  # whether the output starts inside the reasoning

    async def start() -> OutputStream:
        with admission(state, backend, 1):
            ids = await encode()
        check_token_ids(ids, backend.vocab_size, "context")
        params = body.to_sampling_params(model_defaults(backend), len(ids), backend.max_model_len)
        if parser is not None:
            thinking.append(reasoning_start(backend, parser, ids))
        (stream,) = await add_prompts(backend, [ids], [ids], params, request_id, arrival)
        return stream

    if body.stream:
        stream = await until_disconnect(request, start())
        reasoner = ReasoningStream(thinking[0]) if thinking else None
        lines = _ndjson(backend, stream, body.model, arrival, chat, plan, reasoner)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    async def run() -> dict:
        (out,) = await collect([await start()])
        c = out.outputs[0]
        logprobs = _logprobs(backend, c.logprobs) if c.logprobs is not None else None
        reasoning, text = split_reasoning(c.text, thinking[0]) if thinking else ("", c.text)
        parsed = plan.parse(text) if plan is not None else None  # calls: in the answer only
        if parsed is not None and parsed.tool_calls:
            final = _chunk(body.model, chat, parsed.content or "", logprobs, reasoning)
            final["message"]["tool_calls"] = ollama_tool_calls(parsed.tool_calls)
        else:
            final = _chunk(body.model, chat, text, logprobs, reasoning)
        final.update(_final_fields(out, arrival, chat))
        return final

    return JSONResponse(await until_disconnect(request, run()))


def _chunk(
    model: str, chat: bool, text: str, logprobs: list | None = None, thinking: str = ""
) -> dict:
    """One line of the answer; ``thinking`` (the reasoning) only when there is some."""
    chunk = {"model": model, "created_at": _now()}
    if chat:
        chunk["message"] = {"role": "assistant", "content": text}
        if thinking:
            chunk["message"]["thinking"] = thinking
    else:
        chunk["response"] = text
        if thinking:
            chunk["thinking"] = thinking
    chunk["done"] = False
    if logprobs:
        chunk["logprobs"] = logprobs
    return chunk


def _final_fields(out: RequestOutput, arrival: float, chat: bool) -> dict:
    c, m = out.outputs[0], out.metrics
    now = time.monotonic()
    first_token = (m.first_token_time if m else None) or now
    scheduled = (m.first_scheduled_time if m else None) or first_token
    finished = (m.finished_time if m else None) or now
    fields = {
        "done": True,
        "done_reason": c.finish_reason,
        "total_duration": _ns(now - arrival),
        "load_duration": 0,  # the model stays loaded
        "prompt_eval_count": len(out.prompt_token_ids),  # prefix-cache hits included
        "prompt_eval_duration": _ns(first_token - scheduled),
        "eval_count": len(c.token_ids),
        "eval_duration": _ns(finished - first_token),
    }
    if not chat:
        fields["context"] = list(out.prompt_token_ids) + list(c.token_ids)
    return fields


def _logprobs(backend: Backend, entries: list) -> list[dict]:
    return [
        {
            "token": token_text(backend, lp.token_id),
            "logprob": finite(lp.logprob),
            "top_logprobs": [
                {"token": token_text(backend, t), "logprob": finite(v)}
                for t, v in zip(lp.top_token_ids, lp.top_logprobs)
            ],
        }
        for lp in entries
    ]


async def _ndjson(
    backend: Backend,
    stream: OutputStream,
    model: str,
    arrival: float,
    chat: bool,
    plan: ToolPlan | None = None,
    reasoner: ReasoningStream | None = None,
) -> AsyncIterator[str]:
    tools = ToolCallStream(plan) if plan is not None else None

    def line(text: str, logprobs: list | None = None, thinking: str = "") -> str:
        return json.dumps(_chunk(model, chat, text, logprobs, thinking)) + "\n"

    try:
        async for _, out in merge_streams([stream]):
            c = out.outputs[0]
            new = c.logprobs[-len(c.delta_token_ids) :] if c.logprobs and c.delta_token_ids else []
            thinking, text = reasoner.feed(c.delta_text) if reasoner else ("", c.delta_text)
            if out.finished and reasoner is not None:  # what the parser still held
                more_thinking, rest = reasoner.finish()
                thinking, text = thinking + more_thinking, text + rest
            text = tools.feed(text) if tools is not None else text
            if text or thinking or (new and tools is None):
                yield line(text, _logprobs(backend, new), thinking)
            if out.finished and tools is not None:
                rest, _ = tools.finish()
                parsed = plan.parse(tools.held) if not tools.is_content and tools.held else None
                chunk = None
                if parsed is not None and parsed.tool_calls:
                    chunk = _chunk(model, chat, parsed.content or "")
                    chunk["message"]["tool_calls"] = ollama_tool_calls(parsed.tool_calls)
                elif rest:
                    chunk = _chunk(model, chat, rest)
                if chunk is not None:
                    yield json.dumps(chunk) + "\n"
            if out.finished:
                final = _chunk(model, chat, "")
                final.update(_final_fields(out, arrival, chat))
                yield json.dumps(final) + "\n"
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
        yield json.dumps({"error": to_api_error(e).message}) + "\n"
    finally:
        stream.abort()
