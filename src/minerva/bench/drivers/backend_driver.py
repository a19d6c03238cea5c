"""Any registered Backend as an offline driver: the benchmarks drive it through the Backend
protocol only, on a private event loop (BlockingBackend), as the server does.

Prefix caching is off unless asked for (``enable_prefix_caching=true`` in options): the latency
benchmark repeats one prompt, and a cache hit would measure the cache, not the prefill.
"""

from __future__ import annotations

import time

from minerva.backends import load_backend
from minerva.backends.blocking import BlockingBackend
from minerva.bench.drivers.base import GREEDY_SETTINGS, OfflineDriver
from minerva.config import EngineConfig
from minerva.sampling_params import SamplingParams

UNBOUNDED_QUEUE = 1 << 40
"""A throughput run submits every request at once: no admission limit here."""


class BackendDriver(OfflineDriver):
    def __init__(
        self, name: str, model, device="auto", dtype="auto", num_threads=None, options=None
    ):
        super().__init__(model, device, dtype, num_threads, options)
        self.name = name
        config = EngineConfig.from_kwargs(
            model=model,
            backend=name,
            device=device,
            dtype=dtype,
            num_threads=num_threads,
            **{"enable_prefix_caching": False, **self.options},
        )
        backend = load_backend(name, config, max_queued_requests=UNBOUNDED_QUEUE)
        self.runner = BlockingBackend(backend)
        info = backend.model_info(digest=False)  # hashing the weights would only add load time
        self.weight_bytes = info.weight_bytes
        self.max_model_len = info.context_length
        self.device_type = info.device

    @staticmethod
    def _params(max_tokens: int, ignore_eos: bool = True) -> SamplingParams:
        explicit = {k: v for k, v in GREEDY_SETTINGS.items() if k != "no_repeat_ngram_size"}
        return SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, **explicit)

    def stream_timings(self, prompt_ids: list[int], max_tokens: int) -> list[float]:
        return self.runner.run(self._timed(prompt_ids, max_tokens))

    async def _timed(self, prompt_ids: list[int], max_tokens: int) -> list[float]:
        # One coroutine for the whole request: each output is stamped as soon as the loop
        # receives it, right after the engine step's host sync of its ids.
        times: list[float] = []
        stream = await self.runner.backend.add_request(prompt_ids, self._params(max_tokens))
        try:
            async for out in stream:
                times += [time.perf_counter()] * len(out.outputs[0].delta_token_ids)
        finally:
            stream.abort()
        return times

    def generate(self, prompts, max_tokens, ignore_eos=True):
        params = [self._params(n, ignore_eos) for n in max_tokens]
        outs = self.runner.generate(list(prompts), params)
        self.failed_requests += sum(out.finish_reason == "abort" for out in outs)
        return [list(out.token_ids) for out in outs]

    def spec_decode_counters(self) -> dict | None:
        stats = self.runner.backend.stats()
        if not self.options.get("num_speculative_tokens"):
            return None
        names = ("verify_steps", "draft_tokens", "accepted_tokens", "emitted_tokens")
        counters = {name: getattr(stats, f"spec_{name}") for name in names}
        counters["drafts_per_position"] = list(stats.spec_drafts_per_position)
        counters["accepted_per_position"] = list(stats.spec_accepted_per_position)
        return counters

    def token_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.runner.score(list(token_ids))

    def close(self) -> None:
        self.runner.close()
        del self.runner
