"""Minerva itself as an offline backend: ``LLM`` in this process.

Prefix caching is off unless asked for (``enable_prefix_caching=true`` in options): the latency
benchmark repeats one prompt, and a cache hit would measure the cache, not the prefill.
"""

from __future__ import annotations

import time

from minerva.bench.backends.base import OfflineBackend
from minerva.sampling_params import SamplingParams


class MinervaBackend(OfflineBackend):
    name = "minerva"

    def __init__(self, model, device="auto", dtype="auto", num_threads=None, options=None):
        super().__init__(model, device, dtype, num_threads, options)
        from minerva.engine.llm import LLM  # noqa: PLC0415

        kwargs = {"enable_prefix_caching": False, **self.options}
        self.llm = LLM(
            model=model,
            device=device,
            dtype=dtype,
            num_threads=num_threads,
            progress=False,
            **kwargs,
        )
        self.engine = self.llm.engine
        self.weight_bytes = self.engine.worker.weight_bytes
        self.max_model_len = self.engine.max_model_len
        self.device_type = self.engine.platform.kind

    @staticmethod
    def _params(max_tokens: int, ignore_eos: bool = True) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)

    def stream_timings(self, prompt_ids: list[int], max_tokens: int) -> list[float]:
        rid = self.engine.add_request(prompt_ids, self._params(max_tokens))
        times: list[float] = []
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():  # the step ends with the host sync of the ids
                    if out.request_id == rid:
                        times += [time.perf_counter()] * len(out.outputs[0].delta_token_ids)
        finally:
            self.engine.abort_request(rid)
        return times

    def generate(self, prompts, max_tokens, ignore_eos=True):
        params = [self._params(n, ignore_eos) for n in max_tokens]
        return [list(out.token_ids) for out in self.llm.generate(prompts, params)]

    def token_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.engine.score(list(token_ids))

    def close(self) -> None:
        del self.llm, self.engine
