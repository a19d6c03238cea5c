"""RequestStream's bounded buffer: outputs past the bound merge into the newest unread one with
the same deltas a reader taking every output would have seen (n > 1 included), errors are never
merged away, and the admission callback fires once, when the final output is read or on abort."""

from __future__ import annotations

import asyncio

from minerva.engine.outputs import CompletionOutput, RequestOutput
from minerva.engine.request_stream import RequestStream


def _output(step: int, indexes: list[int], finished: bool = False) -> RequestOutput:
    comps = [
        CompletionOutput(
            index=i, text=f"t{i}-{step}", delta_text=f"<{i}.{step}>", delta_token_ids=[step],
            finish_reason="length" if finished else None,
        )
        for i in indexes
    ]  # fmt: skip
    return RequestOutput("r", None, [1, 2], comps, finished=finished)


def _deltas(outputs: list[RequestOutput]) -> dict[int, tuple[str, list[int]]]:
    text: dict[int, str] = {}
    ids: dict[int, list[int]] = {}
    for out in outputs:
        for c in out.outputs:
            text[c.index] = text.get(c.index, "") + c.delta_text
            ids.setdefault(c.index, []).extend(c.delta_token_ids)
    return {i: (text[i], ids[i]) for i in text}


def test_merged_outputs_carry_every_delta_and_the_newest_state():
    # Completions 0 and 1 report on alternate steps, as n > 1 sequences do.
    outputs = [_output(s, [0] if s % 2 else [0, 1], finished=s == 9) for s in range(10)]
    released: list[str] = []

    async def main():
        stream = RequestStream("r", 2, lambda s: None, lambda s: released.append(s.request_id), 3)
        for out in outputs:
            stream.put(out)
        buffered = stream.num_buffered
        read = [o async for o in stream]
        return buffered, read

    buffered, read = asyncio.run(main())
    assert buffered == 3 and len(read) == 3
    assert _deltas(read) == _deltas(outputs)
    assert read[-1].finished and {c.index: c.text for c in read[-1].outputs} == {
        0: "t0-9",
        1: "t1-8",
    }
    assert released == ["r"]


def test_an_error_is_kept_and_abort_releases_once():
    calls: list[str] = []

    async def main():
        stream = RequestStream(
            "r", 1, lambda s: calls.append("abort"), lambda s: calls.append("done"), 1
        )
        stream.put(_output(0, [0]))
        stream.put(RuntimeError("engine died"))
        stream.put(_output(1, [0]))  # not merged into the error
        first = await stream.__anext__()
        try:
            await stream.__anext__()
        except RuntimeError as e:
            error = str(e)
        stream.abort()  # finished already: no second release
        other = RequestStream(
            "o", 1, lambda s: calls.append("abort"), lambda s: calls.append("done")
        )
        other.put(_output(0, [0]))
        other.abort()
        other.abort()
        return first, error, other.num_buffered

    first, error, left = asyncio.run(main())
    assert first.outputs[0].delta_token_ids == [0] and error == "engine died"
    assert calls == ["done", "abort"] and left == 0
