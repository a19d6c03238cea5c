"""OfflineDriver: what the offline benchmarks need from an engine, and nothing more.

All generation is greedy. Token ids go in and come out (the benchmark tokenizes once, with the
model folder's tokenizer, so every backend sees the same ids); outputs end at the first EOS,
which is kept, unless ``ignore_eos``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

GREEDY_SETTINGS: dict[str, Any] = {
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "no_repeat_ngram_size": 0,
}
"""What every driver generates with, set explicitly: a model's generation_config.json (e.g. a
repetition_penalty) must not change one engine's greedy output and not the other's."""


class OfflineDriver(ABC):
    """One loaded model in this process."""

    name: str
    """The engine's name as --backend gives it (it labels the results)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        num_threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = model
        self.options = dict(options or {})

    weight_bytes: int = 0
    """Bytes of weights read per forward step (for the memory-bandwidth figure)."""
    max_model_len: int = 0
    device_type: str = "cpu"
    failed_requests: int = 0
    """Requests of ``generate`` the engine ended by itself (finish "abort", which nothing here
    asks for), since the load: a failure must not pass for a short output."""

    @abstractmethod
    def stream_timings(self, prompt_ids: list[int], max_tokens: int) -> list[float]:
        """Generate exactly ``max_tokens`` tokens for one prompt (EOS ignored); returns the
        ``time.perf_counter()`` at which each token was ready on the host."""

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], max_tokens: list[int], ignore_eos: bool = True
    ) -> list[list[int]]:
        """Generate for all prompts at once (the engine batches as it likes); output ids."""

    @abstractmethod
    def token_logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token_ids[i+1] | token_ids[:i+1]) for every i: ``len(token_ids) - 1`` values."""

    def reset_peak_memory(self) -> None:
        if self.device_type == "cuda":
            import torch  # noqa: PLC0415

            torch.cuda.reset_peak_memory_stats()

    def spec_decode_counters(self) -> dict[str, Any] | None:
        """Cumulative speculative-decoding counters (BackendStats.spec_*), None if the engine
        does not speculate or cannot tell."""
        return None

    def peak_gpu_bytes(self) -> int | None:
        """Peak device memory allocated by torch since the last reset (None off CUDA)."""
        if self.device_type != "cuda":
            return None
        import torch  # noqa: PLC0415

        return int(torch.cuda.max_memory_allocated())

    @abstractmethod
    def close(self) -> None:
        """Free the model (the next engine gets the memory)."""
