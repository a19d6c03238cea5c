"""What the OpenAI and Ollama routes share: body parsing, adding prompts to the backend,
merging their streams, collecting a whole answer, and aborting when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from minerva.backends.base import Backend, OutputStream, RequestOutput
from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams
from minerva.server.json_body import parse_json_object
from minerva.server.state import ServerState

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else (never a 500)."""
    try:
        body = await request.body()
    except ClientDisconnect:  # gone mid-upload: nobody to answer, and not a server error
        raise ClientDisconnected() from None
    return parse_json_object(body)


def prompt_bytes(*parts: Any) -> int:
    """UTF-8 bytes of every string in ``parts`` (nested lists and dicts: messages, tools)."""
    total, stack = 0, list(parts)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(x for x in item if not isinstance(x, int))
    return total


def check_prompt_bytes(state: ServerState, param: str, *parts: Any) -> None:
    """400 before any tokenizing when the prompt text is over ``max_prompt_bytes``."""
    limit = state.config.max_prompt_bytes
    size = prompt_bytes(*parts)
    if size > limit:
        raise RequestError(
            f"the prompt is {size} bytes, over this server's limit of {limit} bytes "
            "(max_prompt_bytes): send a shorter prompt",
            code="prompt_too_large",
            param=param,
        )


@contextlib.contextmanager
def admission(state: ServerState, backend: Backend, num_seqs: int) -> Iterator[None]:
    """Refuse at once (503) when the backend has no room for ``num_seqs`` more sequences,
    counting those still being tokenized, so a full server never pays for tokenization."""
    backend.check_capacity(num_seqs, state.num_seqs_tokenizing)
    state.num_seqs_tokenizing += num_seqs
    try:
        yield
    finally:
        state.num_seqs_tokenizing -= num_seqs


async def encode_admitted(
    state: ServerState, backend: Backend, prompts: Sequence[str | list[int]], param: str
) -> list[list[int]]:
    """encode_prompts after the prompt-size and capacity checks (one sequence per prompt)."""
    check_prompt_bytes(state, param, prompts)
    with admission(state, backend, len(prompts)):
        return await encode_prompts(backend, prompts)


async def encode_prompts(backend: Backend, prompts: Sequence[str | list[int]]) -> list[list[int]]:
    """Token ids of each prompt, tokenized off the event loop (long prompts take a while)."""
    if not backend.has_tokenizer and any(isinstance(p, str) for p in prompts):
        raise RequestError(
            "this model has no tokenizer: send token ids as the prompt", param="prompt"
        )
    return await asyncio.to_thread(
        lambda: [backend.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    )


async def encode_chat(
    backend: Backend,
    messages: list[dict],
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    template_kwargs: dict[str, Any] | None = None,
):
    """Prompt ids of a conversation rendered with the model's chat template; ``template_kwargs``
    become template variables (``chat_template_kwargs``, Ollama's ``think``)."""
    if not backend.has_tokenizer:
        raise RequestError(
            "this model has no tokenizer, so chat is not available", param="messages"
        )
    if template_kwargs:
        return await asyncio.to_thread(
            lambda: backend.apply_chat_template(
                messages, add_generation_prompt, tools, **template_kwargs
            )
        )
    if tools is None:  # backends without tool support keep the two-argument call
        return await asyncio.to_thread(backend.apply_chat_template, messages, add_generation_prompt)
    return await asyncio.to_thread(
        backend.apply_chat_template, messages, add_generation_prompt, tools
    )


async def add_prompts(
    backend: Backend,
    prompts: Sequence[str | list[int]],
    ids: Sequence[list[int]],
    params: SamplingParams,
    request_id: str,
    arrival_time: float,
) -> list[OutputStream]:
    """Add every prompt (ids ``{request_id}-{i}`` for a batch); all or none are added."""
    streams: list[OutputStream] = []
    try:
        for i, (prompt, prompt_ids) in enumerate(zip(prompts, ids)):
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            streams.append(await backend.add_request(prompt, params, rid, prompt_ids, arrival_time))
    except BaseException:
        abort_all(streams)
        raise
    return streams


def abort_all(streams: Sequence[OutputStream]) -> None:
    for stream in streams:
        stream.abort()


async def merge_streams(
    streams: Sequence[OutputStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they come; aborts them all on exit."""
    try:
        if len(streams) == 1:
            async for out in streams[0]:
                yield 0, out
            return
        # Bounded: a reader that stops leaves the outputs in the streams' own bounded buffers.
        queue: asyncio.Queue = asyncio.Queue(maxsize=len(streams))

        async def pump(i: int, stream: OutputStream) -> None:
            try:
                async for out in stream:
                    await queue.put((i, out))
                await queue.put((i, None))
            except Exception as e:  # noqa: BLE001 - handed to the consumer
                await queue.put((i, e))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        try:
            remaining = len(streams)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
    finally:
        abort_all(streams)


async def collect(streams: Sequence[OutputStream]) -> list[RequestOutput]:
    """The final output of each stream, with all its completions in index order."""
    finals: list[RequestOutput | None] = [None] * len(streams)
    completions: list[dict] = [{} for _ in streams]
    async for i, out in merge_streams(streams):
        for comp in out.outputs:
            completions[i][comp.index] = comp
        if out.finished:
            finals[i] = out
    results = []
    for final, comps in zip(finals, completions):
        assert final is not None, "a stream ended without a finished output"
        final.outputs = [comps[k] for k in sorted(comps)]
        results.append(final)
    return results


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it (which aborts its requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # its finally blocks abort the engine requests
    raise ClientDisconnected()


async def _wait_disconnect(request: Request) -> None:
    # The body was read already: the next ASGI message is http.disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: dict | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def finite(x: float) -> float:
    """JSON has no -inf: OpenAI reports impossible tokens as -9999."""
    return x if x > -9999.0 else -9999.0


def model_defaults(backend: Backend) -> dict[str, Any]:
    """The model's generation defaults, as SamplingParams fields."""
    params = backend.default_sampling_params()
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "repetition_penalty": params.repetition_penalty,
    }
