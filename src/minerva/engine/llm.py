"""LLM: the offline Python API. Batches prompts through one LLMEngine, results in prompt order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from minerva.config import EngineConfig
from minerva.engine.llm_engine import LLMEngine
from minerva.engine.outputs import CompletionOutput, RequestOutput
from minerva.sampling_params import SamplingParams

Prompt = str | list[int]
Message = dict


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # one tokenized prompt
    return list(prompts)


class LLM:
    """Generate from a local Hugging Face folder.

    >>> llm = LLM(model="path/to/folder", device="cpu", dtype="float32")
    >>> llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))[0].text
    """

    def __init__(
        self,
        model: str | None = None,
        config: EngineConfig | None = None,
        progress: bool = True,
        **kwargs,
    ) -> None:
        if config is None:
            config = EngineConfig.from_kwargs(model=model, **kwargs)
        elif model is not None or kwargs:
            config = EngineConfig.from_kwargs(
                **{**config.flat(), **kwargs, **({"model": model} if model else {})}
            )
        self.engine = LLMEngine(config, progress=progress)
        self.tokenizer = self.engine.tokenizer

    def close(self) -> None:
        """Stop a tensor-parallel engine's other ranks now (they stop with the process too)."""
        self.engine.close()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run all prompts together under continuous batching; outputs in prompt order."""
        prompt_list = _as_prompt_list(prompts)
        params = self._params_list(sampling_params, len(prompt_list))
        ids = [self.engine.add_request(p, sp, stream=False) for p, sp in zip(prompt_list, params)]
        return self._run(ids)

    def embed(self, prompts: Prompt | Sequence[Prompt]) -> list[list[float]]:
        """One vector per prompt: the mean of its final-norm hidden states, L2-normalised
        (run together with any other requests under continuous batching)."""
        params = SamplingParams(pooling="mean")
        return [out.embedding for out in self.generate(prompts, params)]

    def chat(
        self,
        messages: list[Message] | Sequence[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.encode_chat(c, add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params)

    def encode_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        return self.tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt)

    def stream(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None
    ) -> Iterator[CompletionOutput]:
        """Yield the first completion's deltas as they are generated."""
        rid = self.engine.add_request(prompt, sampling_params)
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.request_id == rid:
                        yield from (c for c in out.outputs if c.index == 0)
        finally:
            self.engine.abort_request(rid)

    def _params_list(self, sp, n: int) -> list[SamplingParams]:
        if sp is None:
            return [self.engine.default_sampling_params() for _ in range(n)]
        if isinstance(sp, SamplingParams):
            return [sp] * n
        if len(sp) != n:
            raise ValueError(f"got {len(sp)} SamplingParams for {n} prompts")
        return list(sp)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        """Step until these (stream=False) requests have finished; each reports once."""
        final: dict[str, RequestOutput] = {}
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        final[out.request_id] = out
        finally:
            self.engine.abort_request([r for r in request_ids if r not in final])
        return [final[rid] for rid in request_ids]
