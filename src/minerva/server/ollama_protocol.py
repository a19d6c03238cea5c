"""Ollama request models (/api/generate, /api/chat) and their ``options`` -> SamplingParams.

Like Ollama, unknown top-level fields are ignored; features we lack (images, templates) get a
400 naming them; ``format``, chat ``tools`` and ``think`` are honoured. ``num_ctx`` is a hard limit: a prompt over it is an
error, never a silent truncation. No torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams, StructuredOutputs
from minerva.server.openai_protocol import sampling_params
from minerva.server.structured_formats import from_ollama_format

THINK_LEVELS = ("high", "medium", "low")

OLLAMA_API_VERSION = "0.12.0"
"""The Ollama release whose API these routes follow (what /api/version reports)."""


class Options(BaseModel):
    """Ollama's model options. Runtime knobs (threads, GPU layers, mmap...) have no effect here."""

    model_config = ConfigDict(strict=True, extra="forbid")

    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = Field(None, ge=1)
    # Sampling methods we do not implement: only their "off" values are accepted.
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # Runtime knobs of llama.cpp: accepted, no effect on Minerva.
    repeat_last_n: int | None = None
    num_keep: int | None = None
    penalize_newline: bool | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None

    def check_supported(self) -> None:
        for name, off in (("typical_p", 1.0), ("tfs_z", 1.0), ("mirostat", 0)):
            value = getattr(self, name)
            if value is not None and value != off:
                raise RequestError(
                    f"option {name}={value} is not supported by this server; remove it",
                    code="unsupported_field",
                    param=f"options.{name}",
                )


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = True
    options: Options | None = None
    format: Any = None
    keep_alive: float | int | str | None = None
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def check_supported(self) -> None:
        self.thinks()  # a 400 for a think value Ollama refuses too
        if self.options is not None:
            self.options.check_supported()

    def thinks(self) -> bool | None:
        """``think`` as on or off (None: not given). Ollama's levels high / medium / low are
        for gpt-oss; on other models Ollama reads them as on, and so does this server."""
        if self.think is None or isinstance(self.think, bool):
            return self.think
        if self.think in THINK_LEVELS:
            return True
        raise RequestError(
            f"think must be true, false or one of {', '.join(THINK_LEVELS)}, got {self.think!r}",
            param="think",
        )

    def template_kwargs(self, parser: str | None) -> dict[str, Any]:
        """The chat template variables ``think`` sets: ``enable_thinking`` (Qwen3's switch,
        which Ollama sets too); a 400 for think on a model that does not think (``parser``:
        the model's reasoning parser, None without one)."""
        thinks = self.thinks()
        if thinks and parser is None:
            raise RequestError(f"{self.model!r} does not support thinking", param="think")
        return {} if thinks is None or parser is None else {"enable_thinking": thinks}

    def to_sampling_params(
        self,
        defaults: dict[str, Any],
        prompt_len: int,
        max_model_len: int,
        structured: StructuredOutputs | None = None,
    ) -> SamplingParams:
        """Options -> SamplingParams; RequestError if the prompt does not fit ``num_ctx``.
        ``structured``: the constraint (``format``'s unless a tool plan gives one)."""
        o = self.options or Options()
        context = min(o.num_ctx or max_model_len, max_model_len)
        if prompt_len >= context:
            raise RequestError(
                f"the prompt is {prompt_len} tokens, which does not fit the context of {context} "
                "tokens (num_ctx / the model's length) with room to generate: shorten it or "
                "raise num_ctx",
                code="context_length_exceeded",
                param="options.num_ctx",
            )
        room = context - prompt_len
        if o.num_predict is None or o.num_predict in (-1, -2):
            max_tokens = room  # -1: until the context is full, -2: fill the context
        elif o.num_predict >= 1:
            max_tokens = min(o.num_predict, room)
        else:
            raise RequestError(
                f"num_predict must be a positive number of tokens or -1, got {o.num_predict}",
                param="options.num_predict",
            )
        requested = {
            "temperature": o.temperature,
            "top_k": o.top_k,
            "top_p": o.top_p,
            "min_p": o.min_p,
            "seed": o.seed,
            "stop": o.stop,
            "repetition_penalty": o.repeat_penalty,
            "presence_penalty": o.presence_penalty,
            "frequency_penalty": o.frequency_penalty,
        }
        # Unset options keep the model's generation defaults, as on the OpenAI routes.
        values = {**defaults, **{k: v for k, v in requested.items() if v is not None}}
        values["max_tokens"] = max_tokens
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs requires logprobs=true", param="top_logprobs")
        values["logprobs"] = (self.top_logprobs or 0) if self.logprobs else None
        values["structured"] = structured or from_ollama_format(self.format)
        return sampling_params(values)


class GenerateRequest(_Request):
    prompt: str | None = None
    system: str | None = None
    raw: bool = False
    context: list[int] | None = None
    suffix: str | None = None
    template: str | None = None
    images: list[Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.images:
            raise RequestError(
                "images are not supported by this model (it reads text only)", param="images"
            )
        for name in ("template",):
            if getattr(self, name):
                raise RequestError(f"{name!r} is not supported by this server", param=name)


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Any] | None = None
    tool_calls: list[Any] | None = None
    thinking: str | None = None
    tool_name: str | None = None

    def plain(self) -> dict[str, Any]:
        """The message for the chat template; tool calls as {"type": "function", "function":
        {"name", "arguments": object}} (the Hugging Face convention)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [_template_call(c) for c in self.tool_calls]
        if self.tool_name is not None:
            message["name"] = self.tool_name
        if self.thinking:  # an earlier answer's thinking: the chat template decides its use
            message["thinking"] = self.thinking
        return message


def _template_call(call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RequestError(
            'each tool call must be {"function": {"name": ..., "arguments": {...}}}',
            param="messages",
        )
    args = fn.get("arguments", {})
    return {"type": "function", "function": {"name": fn["name"], "arguments": args}}


class ChatRequest(_Request):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for i, m in enumerate(self.messages):
            if m.images:
                raise RequestError(
                    f"messages[{i}]: images are not supported by this model (it reads text only)",
                    param="messages",
                )
