"""OpenAI routes: /v1/models, /v1/chat/completions and /v1/completions (SSE streaming too)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from minerva.backends.base import Backend, CompletionOutput, OutputStream
from minerva.errors import RequestError
from minerva.server import model_listing as listing
from minerva.server import openai_responses as R
from minerva.server.api_errors import model_not_found, to_api_error
from minerva.server.completion_echo import Echo, PromptOnly, echo_prompts, join_logprobs
from minerva.server.fim import fim_prompts
from minerva.server.generation import (
    abort_all,
    add_prompts,
    admission,
    check_prompt_bytes,
    collect,
    encode_chat,
    encode_prompts,
    merge_streams,
    model_defaults,
    read_json_object,
    sse,
    until_disconnect,
)
from minerva.server.model_listing import ListedModel
from minerva.server.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    check_content_parts,
    check_unsupported,
)
from minerva.server.reasoning import (
    ReasoningStream,
    reasoning_start,
    resolve_parser,
    split_reasoning,
)
from minerva.server.state import ServerState, get_state
from minerva.server.tool_calls import (
    ToolCallStream,
    ToolPlan,
    chat_message,
    tool_plan,
    with_tool_prompt,
)

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _model_card(state: ServerState, m: ListedModel) -> dict:
    return {
        "id": m.name,
        "object": "model",
        "created": state.created,
        "owned_by": "minerva",
        "root": m.source or m.name,
        "max_model_len": m.context_length,
        "format": m.format,
        "quantization": m.quantization,
        "digest": m.digest,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = get_state(request)
    cards = [_model_card(state, m) for m in await listing.list_models(state)]
    return JSONResponse({"object": "list", "data": cards})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    if state.registry is None:
        state.ready_backend()
        state.check_model(model_id)
        return JSONResponse(_model_card(state, (await listing.list_models(state))[0]))
    model = state.registry.find(model_id)
    for m in await listing.list_models(state):
        if m.name == model.name:
            return JSONResponse(_model_card(state, m))
    raise model_not_found(model_id, ", ".join(state.registry.models()))  # gone meanwhile


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    data = await read_json_object(request)
    check_unsupported(data)
    check_content_parts(data)
    body = ChatCompletionRequest.model_validate(data)
    backend = await state.backend_for(request, body.model)
    model_name = state.response_name(body.model)
    vocab_size = backend.vocab_size
    template = backend.chat_template
    plan = tool_plan(body.tools, body.tool_choice, body.parallel_tool_calls, template)
    structured = body.structured_output()
    if plan is not None and plan.forced:
        if structured is not None:
            raise RequestError(
                "response_format cannot be combined with a required or named tool_choice",
                param="response_format",
            )
        structured = plan.structured
    params = body.to_sampling_params(model_defaults(backend), vocab_size, structured)
    messages = with_tool_prompt([m.plain() for m in body.messages], plan, template)
    template_tools = plan.template_tools(template) if plan is not None else None
    template_kwargs = body.template_kwargs()
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    check_prompt_bytes(state, "messages", messages, template_tools, template_kwargs)
    parser = resolve_parser(state.config.reasoning_parser, template)
    thinking: list[bool] = []  # whether the output starts inside the reasoning (a parser's)

    async def start() -> list[OutputStream]:
        with admission(state, backend, body.n):
            ids = await encode_chat(
                backend, messages, body.add_generation_prompt, template_tools, template_kwargs
            )
        if parser is not None:
            thinking.append(reasoning_start(backend, parser, ids))
        return await add_prompts(backend, [ids], [ids], params, request_id, arrival)

    if body.stream:
        streams = await until_disconnect(request, start())
        in_reasoning = thinking[0] if thinking else None
        events = _chat_events(backend, streams[0], body, request_id, model_name, plan, in_reasoning)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    async def run() -> dict:
        (out,) = await collect(await start())
        in_reasoning = thinking[0] if thinking else None
        choices = [_chat_choice(backend, c, plan, in_reasoning) for c in out.outputs]
        n_out = sum(len(c.token_ids) for c in out.outputs)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": R.usage(len(out.prompt_token_ids), n_out, out.num_cached_tokens),
        }

    return JSONResponse(await until_disconnect(request, run()))


def _reasoning_fields(reasoning: str | None) -> dict:
    """The reasoning under both names clients read: ``reasoning_content`` (DeepSeek's API,
    llama.cpp, vLLM up to 0.10) and ``reasoning`` (vLLM from 0.11, OpenRouter)."""
    return {"reasoning_content": reasoning, "reasoning": reasoning}


def _chat_choice(
    backend: Backend, c: CompletionOutput, plan: ToolPlan | None, in_reasoning: bool | None
) -> dict:
    """``in_reasoning``: None for a model without thinking (the text is all content), else
    whether its output starts inside the think block."""
    logprobs = R.chat_logprobs(backend, c.logprobs) if c.logprobs is not None else None
    if in_reasoning is None:
        message, finish_reason = chat_message(c.text, c.finish_reason, plan)
    else:  # tool calls are read from the answer only, never from the reasoning
        reasoning, content = split_reasoning(c.text, in_reasoning)
        message, finish_reason = chat_message(content, c.finish_reason, plan)
        message.update(_reasoning_fields(reasoning or None))
    return {
        "index": c.index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


async def _chat_events(
    backend: Backend,
    stream: OutputStream,
    body: ChatCompletionRequest,
    request_id: str,
    model: str,
    plan: ToolPlan | None = None,
    in_reasoning: bool | None = None,
) -> AsyncIterator[str]:
    created, with_usage = int(time.time()), body.include_usage

    def chunk(index: int, delta: dict, finish_reason=None, logprobs=None) -> str:
        payload = R.chat_chunk(request_id, created, model, index, delta, finish_reason, logprobs)
        return sse(payload | ({"usage": None} if with_usage else {}))

    tools = {i: ToolCallStream(plan) for i in range(body.n)} if plan is not None else {}
    thinking = (
        {} if in_reasoning is None else {i: ReasoningStream(in_reasoning) for i in range(body.n)}
    )

    def split(index: int, text: str, final: bool = False) -> tuple[str, str]:
        """(reasoning, content) of a delta: the content through the tool-call stream."""
        reasoning = ""
        if thinking:
            reasoning, text = thinking[index].finish() if final else thinking[index].feed(text)
        return reasoning, tools[index].feed(text) if tools else text

    num_out, num_prompt, num_cached = 0, 0, 0
    try:
        for i in range(body.n):
            first_content = None if plan is not None and plan.forced else ""
            yield chunk(i, {"role": "assistant", "content": first_content})
        async for _, out in merge_streams([stream]):
            num_prompt, num_cached = len(out.prompt_token_ids), out.num_cached_tokens
            for c in out.outputs:
                num_out += len(c.delta_token_ids)
                logprobs = _delta_logprobs(c)
                lp = R.chat_logprobs(backend, logprobs) if logprobs and not tools else None
                reasoning, text = split(c.index, c.delta_text)
                if reasoning:  # the delta's logprobs go with its last chunk
                    yield chunk(
                        c.index,
                        _reasoning_fields(reasoning),
                        logprobs=None if text else lp,
                    )
                if text or (lp and not reasoning):
                    yield chunk(c.index, {"content": text}, logprobs=lp)
                if c.finish_reason is not None:
                    finish_reason = c.finish_reason
                    if thinking:  # what the reasoning parser still held
                        reasoning, text = split(c.index, "", final=True)
                        if reasoning:
                            yield chunk(c.index, _reasoning_fields(reasoning))
                        if text:
                            yield chunk(c.index, {"content": text})
                    if tools:
                        rest, calls = tools[c.index].finish()
                        if rest:
                            yield chunk(c.index, {"content": rest})
                        for delta in calls:
                            yield chunk(c.index, {"tool_calls": delta})
                        finish_reason = "tool_calls" if calls else finish_reason
                    yield chunk(c.index, {}, finish_reason=finish_reason)
        if with_usage:
            totals = R.usage(num_prompt, num_out, num_cached)
            yield sse(R.usage_chunk(request_id, created, model, "chat.completion.chunk", totals))
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
        yield sse(to_api_error(e).openai_body())
    finally:
        stream.abort()  # client gone (cancelled or closed mid-yield): free the KV blocks
    yield sse("[DONE]")


def _delta_logprobs(c: CompletionOutput) -> list:
    if c.logprobs is None or not c.delta_token_ids:
        return []
    return c.logprobs[-len(c.delta_token_ids) :]


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    arrival = time.monotonic()
    state = get_state(request)
    data = await read_json_object(request)
    check_unsupported(data)
    body = CompletionRequest.model_validate(data)
    body.check_supported()
    backend = await state.backend_for(request, body.model)
    model_name = state.response_name(body.model)
    vocab_size = backend.vocab_size
    prompts = body.prompts(vocab_size)
    check_prompt_bytes(state, "prompt", prompts, body.suffix)
    params = body.to_sampling_params(model_defaults(backend), vocab_size)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    echoes: list[Echo] = []

    async def start() -> list[OutputStream]:
        nonlocal prompts
        with admission(state, backend, len(prompts) * body.n):
            if body.suffix:
                prompts = await asyncio.to_thread(fim_prompts, backend, prompts, body.suffix)
            ids = await encode_prompts(backend, prompts)
            if body.echo:
                skip = body.skip_special_tokens
                echoes.extend(await echo_prompts(backend, prompts, ids, body.logprobs, skip))
        if not body.generates:
            return [PromptOnly(x, body.n) for x in ids]
        return await add_prompts(backend, prompts, ids, params, request_id, arrival)

    if body.stream:
        streams = await until_disconnect(request, start())
        events = _completion_events(backend, streams, body, request_id, model_name, echoes)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    async def run() -> dict:
        outs = await collect(await start())
        choices, n_prompt, n_out, n_cached = [], 0, 0, 0
        for p, out in enumerate(outs):
            n_prompt += len(out.prompt_token_ids)
            n_cached += out.num_cached_tokens
            echo = echoes[p] if echoes else None
            for c in out.outputs:
                n_out += len(c.token_ids)
                logprobs = None
                if c.logprobs is not None:
                    offset = echo.text_end if echo else 0
                    logprobs = R.completion_logprobs(backend, c.logprobs, offset)
                if echo is not None and echo.logprobs is not None:
                    logprobs = join_logprobs(echo.logprobs, logprobs)
                choices.append(
                    {
                        "index": p * body.n + c.index,
                        "text": (echo.text if echo else "") + c.text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                    }  # fmt: skip
                )
        return {
            "id": request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": R.usage(n_prompt, n_out, n_cached),
        }

    return JSONResponse(await until_disconnect(request, run()))


async def _completion_events(
    backend: Backend,
    streams: list[OutputStream],
    body: CompletionRequest,
    request_id: str,
    model: str,
    echoes: list[Echo],
) -> AsyncIterator[str]:
    created, with_usage = int(time.time()), body.include_usage
    n_out = 0
    prompt_tokens: dict[int, tuple[int, int]] = {}
    offsets: dict[int, int] = {}
    try:
        for p, echo in enumerate(echoes):  # the prompts first, once per completion
            for i in range(p * body.n, (p + 1) * body.n):
                offsets[i] = echo.text_end
                chunk = R.completion_chunk(
                    request_id, created, model, i, echo.text, None, echo.logprobs
                )
                yield sse(chunk | ({"usage": None} if with_usage else {}))
        async for p, out in merge_streams(streams):
            prompt_tokens[p] = (len(out.prompt_token_ids), out.num_cached_tokens)
            for c in out.outputs:
                n_out += len(c.delta_token_ids)
                index = p * body.n + c.index
                logprobs = _delta_logprobs(c)
                lp = None
                if c.logprobs is not None:
                    lp = R.completion_logprobs(backend, logprobs, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in lp["tokens"])
                if c.delta_text or logprobs or c.finish_reason is not None:
                    chunk = R.completion_chunk(
                        request_id, created, model, index, c.delta_text, c.finish_reason, lp
                    )
                    yield sse(chunk | ({"usage": None} if with_usage else {}))
        if with_usage:
            n_prompt = sum(n for n, _ in prompt_tokens.values())
            n_cached = sum(c for _, c in prompt_tokens.values())
            totals = R.usage(n_prompt, n_out, n_cached)
            yield sse(R.usage_chunk(request_id, created, model, "text_completion", totals))
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
        yield sse(to_api_error(e).openai_body())
    finally:
        abort_all(streams)  # client gone (cancelled or closed mid-yield): free the KV blocks
    yield sse("[DONE]")
