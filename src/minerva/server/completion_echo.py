"""OpenAI's ``echo`` for /v1/completions: the prompt in front of the completion, and with
``logprobs`` the prompt tokens' logprobs too (the first one has none, as OpenAI reports it).
``max_tokens=0`` with echo scores the prompt without generating (lm-eval's loglikelihood)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minerva.backends.base import Backend, CompletionOutput, RequestOutput
from minerva.request import Logprobs
from minerva.server.openai_responses import completion_logprobs


@dataclass
class Echo:
    """What one prompt contributes in front of each of its completions."""

    text: str
    logprobs: dict[str, Any] | None
    """tokens / token_logprobs / top_logprobs / text_offset of the prompt, or None."""

    @property
    def text_end(self) -> int:
        """Where the completion's text_offset continues (after the prompt tokens' texts)."""
        if not self.logprobs or not self.logprobs["tokens"]:
            return 0
        return self.logprobs["text_offset"][-1] + len(self.logprobs["tokens"][-1])


async def echo_prompts(
    backend: Backend,
    prompts: list[str | list[int]],
    ids: list[list[int]],
    num_logprobs: int | None,
    skip_special_tokens: bool,
) -> list[Echo]:
    """The echo of each prompt: its text and, when logprobs were asked, its tokens' logprobs."""
    echoes = []
    for prompt, prompt_ids in zip(prompts, ids):
        text = (
            prompt if isinstance(prompt, str) else backend.decode(prompt_ids, skip_special_tokens)
        )
        logprobs = None
        if num_logprobs is not None:
            entries = []
            if len(prompt_ids) > 1:
                entries = await backend.prompt_logprobs(prompt_ids, num_logprobs)
            logprobs = _prompt_logprobs(backend, prompt_ids[0], entries)
        echoes.append(Echo(text, logprobs))
    return echoes


class PromptOnly:
    """The output stream of an echo with max_tokens=0: n empty completions, ended by length."""

    def __init__(self, prompt_token_ids: list[int], n: int) -> None:
        self.request_id = "echo"
        self._output = RequestOutput(
            request_id=self.request_id,
            prompt=None,
            prompt_token_ids=prompt_token_ids,
            outputs=[CompletionOutput(index=i, finish_reason="length") for i in range(n)],
            finished=True,
        )

    async def __aiter__(self):
        yield self._output

    def abort(self) -> None:
        """Nothing runs in the engine."""


def _prompt_logprobs(backend: Backend, first: int, entries: list[Logprobs]) -> dict[str, Any]:
    """The first token gets None (nothing before it); the rest their scored logprobs."""
    head = completion_logprobs(backend, [Logprobs(first, 0.0, 1)])
    head["token_logprobs"], head["top_logprobs"] = [None], [None]
    return join_logprobs(head, completion_logprobs(backend, entries, len(head["tokens"][0])))


def join_logprobs(first: dict[str, Any], second: dict[str, Any] | None) -> dict[str, Any]:
    """Two completion logprobs objects, one after the other (second's offsets already shifted)."""
    if second is None:
        return first
    return {key: first[key] + second[key] for key in first}
