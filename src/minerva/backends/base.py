"""The Backend protocol: all that the server, the CLI and the benchmarks know of an engine.

Minerva's own engine is one backend (backends/minerva.py); llama.cpp, mistral.rs and MLX will
be others. Requests go in as token ids (the caller tokenizes through the backend, so every
engine sees the same ids) and come back as a stream of ``RequestOutput``; errors a request can
cause are MinervaErrors (RequestError 400, EngineUnavailableError and its kinds 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from minerva.engine.outputs import CompletionOutput, RequestOutput, StepInfo
from minerva.request import Logprobs
from minerva.sampling_params import SamplingParams

__all__ = [
    "Backend",
    "BackendStats",
    "CompletionOutput",
    "ModelInfo",
    "OutputStream",
    "RequestOutput",
    "StepInfo",
    "StepObserver",
]


@dataclass(frozen=True)
class ModelInfo:
    """What the model is, for /api/show, /api/tags, /api/ps, /v1/models and doctor."""

    name: str
    """The model's own name (its folder or file name); the server may serve it under another."""
    source: str
    """Where it was loaded from (a folder or a file)."""
    format: str
    """How the weights are stored on disk: "safetensors", "pytorch" (.bin) or "gguf"."""
    quantization: str
    """The weights' quantization type ("Q4_K_M", "Q8_0", ...), or for dense weights their
    dtype ("BFLOAT16", "FLOAT32")."""
    dtype: str
    """The compute dtype ("bfloat16", "float32", ...)."""
    parameter_count: int
    weight_bytes: int
    """Bytes the weights take in memory (a quantized layout is not numel x element size)."""
    digest: str
    """``sha256:<hex>`` of the model's files (for one file, its ``sha256sum``)."""
    context_length: int
    """Longest sequence (prompt + output) this backend serves: max_model_len."""
    vocab_size: int
    architecture: str
    """The checkpoint's architecture ("LlamaForCausalLM", ...)."""
    family: str
    """The model family as Ollama names it ("llama", "mistral", "qwen2")."""
    device: str = "cpu"
    """Where it runs: "cuda", "mps" or "cpu"."""
    modified_at: float | None = None
    """Unix time the source last changed, when known."""
    hidden_size: int | None = None
    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None


@dataclass(frozen=True)
class BackendStats:
    """Counters for /metrics and the benchmarks: queues and KV cache as of the last step, device
    memory as of the call. A backend that cannot tell a figure leaves it 0."""

    num_running: int = 0
    """Sequences running."""
    num_waiting: int = 0
    """Sequences waiting to be scheduled."""
    num_requests_in_flight: int = 0
    """Requests added and not yet finished or aborted."""
    kv_cache_usage: float = 0.0
    """Fraction of KV cache blocks in use (0..1)."""
    num_kv_blocks: int = 0
    prefix_cache_queries: int = 0
    """Prompt tokens looked up in the prefix cache (cumulative)."""
    prefix_cache_hits: int = 0
    """Prompt tokens served from the prefix cache (cumulative)."""
    num_preemptions: int = 0
    """Requests preempted (cumulative)."""
    device_memory_used: int = 0
    """Bytes of device memory this process uses (CUDA/MPS allocated, RSS on CPU)."""
    device_memory_total: int = 0
    model_memory_bytes: int = 0
    """Bytes this backend's model holds on its device: weights + KV cache + activation reserve
    (what unloading it frees; 0 when unknown)."""
    spec_verify_steps: int = 0
    """Speculative decoding (cumulative): request-steps that verified draft tokens."""
    spec_draft_tokens: int = 0
    """Draft tokens proposed and verified."""
    spec_accepted_tokens: int = 0
    """Draft tokens the target accepted."""
    spec_emitted_tokens: int = 0
    """Tokens the verify steps emitted (accepted drafts + one each)."""
    spec_drafts_per_position: list[int] = field(default_factory=list)
    """Request-steps with a draft at position j (0-based)."""
    spec_accepted_per_position: list[int] = field(default_factory=list)
    """Of those, how many accepted it."""

    @property
    def spec_acceptance_rate(self) -> float:
        return self.spec_accepted_tokens / self.spec_draft_tokens if self.spec_draft_tokens else 0.0

    @property
    def spec_mean_accepted_length(self) -> float:
        """Tokens per verify step (1: no draft accepted; 0: no speculation)."""
        steps = self.spec_verify_steps
        return self.spec_emitted_tokens / steps if steps else 0.0


class OutputStream(Protocol):
    """The outputs of one request, in order; the last one has ``finished`` set."""

    request_id: str

    def __aiter__(self) -> AsyncIterator[RequestOutput]: ...

    def abort(self) -> None:
        """Stop generating (a no-op once finished); the engine frees what the request held."""


class StepObserver(Protocol):
    def on_step(self, info: StepInfo | None, outputs: list[RequestOutput]) -> None:
        """Called after each engine step (info None when nothing was scheduled), on the engine's
        own thread: it must be quick and must not raise."""


@runtime_checkable
class Backend(Protocol):
    """One loaded model behind one engine. ``start()`` from the event loop that will use it;
    everything async runs on that loop; ``model_info``, ``stats`` and the tokenizer calls are
    safe from any thread."""

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Begin serving (the model is loaded already, by the backend's factory)."""

    async def drain(self, timeout: float) -> int:
        """Refuse new requests, let in-flight ones run up to ``timeout`` s, abort the rest;
        returns how many were aborted."""

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """Stop within ``timeout`` s; requests still in flight end with EngineDeadError.
        False when the engine could not be stopped in time (a hung step)."""

    @property
    def is_running(self) -> bool: ...

    # -- requests -------------------------------------------------------------------------
    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
        stream: bool = True,
    ) -> OutputStream:
        """Queue a request once the engine accepts it. ``prompt`` is kept for the outputs;
        ``prompt_token_ids`` (when given) are what runs. stream=False: only the final output.
        ``params.pooling`` set: the prompt runs, nothing is generated, and the final output's
        ``embedding`` holds the pooled vector (a backend that cannot: NotSupportedError).
        Raises RequestError (400) or an EngineUnavailableError (503) at once."""

    def abort(self, request_id: str) -> None:
        """Abort a request by id (no-op when unknown or finished)."""

    def check_capacity(self, num_seqs: int = 1, pending: int = 0) -> None:
        """Raise the EngineUnavailableError (or RequestError) ``add_request`` would raise now
        for ``num_seqs`` more sequences with ``pending`` already on their way in: cheap, so
        the server refuses before paying for tokenization."""

    async def score(self, token_ids: list[int]) -> list[float]:
        """log p(token_ids[i+1] | token_ids[:i+1]) for every i (perplexity); a backend that
        cannot raises NotSupportedError."""

    async def prompt_logprobs(self, token_ids: list[int], num_top: int = 0) -> list[Logprobs]:
        """score, with each token's rank and its ``num_top`` likeliest alternatives (OpenAI's
        echo with logprobs); a backend that cannot raises NotSupportedError."""

    def set_observer(self, observer: StepObserver | None) -> None:
        """Call ``observer.on_step`` after every step (metrics); None stops it."""

    # -- what it serves -------------------------------------------------------------------
    def stats(self) -> BackendStats:
        """Cheap: queues as of the last step, device memory now."""

    def model_info(self, digest: bool = True) -> ModelInfo:
        """May block the first time (the digest reads every weight byte): call it off the
        event loop. digest=False never blocks: ``digest`` is "" unless already known."""

    @property
    def max_model_len(self) -> int:
        """Longest prompt + output (cheap; ``model_info().context_length``)."""

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size) (cheap; ``model_info().vocab_size``)."""

    # -- tokenizer and chat template ------------------------------------------------------
    @property
    def has_tokenizer(self) -> bool:
        """False when only token-id prompts work (encode and chat raise RequestError)."""

    @property
    def chat_template(self) -> str | None:
        """The default chat template's source (None: the model has none)."""

    @property
    def eos_token_ids(self) -> list[int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        """Prompt ids of a conversation rendered with the model's chat template (``tools``:
        OpenAI function tools, for templates that render them; ``template_kwargs``: more
        template variables, e.g. ``enable_thinking=False``)."""

    def default_sampling_params(self, **overrides: Any) -> SamplingParams:
        """SamplingParams with the model's generation defaults, then ``overrides``, applied."""
