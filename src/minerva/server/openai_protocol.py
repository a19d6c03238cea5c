"""OpenAI request models (/v1/chat/completions, /v1/completions) and their SamplingParams.

Unknown fields are refused (400) and known-but-unsupported ones (``functions``, ``audio``...)
get a 400 that names them: nothing is silently ignored. ``tools`` and ``response_format`` are
read by tool_calls.py and structured_formats.py. No torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams, StructuredOutputs
from minerva.server.structured_formats import from_response_format, from_structured_outputs
from minerva.server.tool_calls import arguments_object

MAX_N = 32
MAX_PROMPTS = 64

# field -> (value that means "off" and is accepted, what the field is)
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "functions": ([], "function calling"),
    "function_call": ("none", "function calling"),
    "audio": (None, "audio output"),
    "modalities": (["text"], "modalities other than text"),
    "prediction": (None, "predicted outputs"),
    "reasoning_effort": (None, "reasoning_effort"),
    "web_search_options": (None, "web search"),
}

# content part type -> what it carries, for a 400 naming it (instead of a union dump)
_MEDIA_PARTS = {
    "image_url": "images",
    "input_image": "images",
    "image": "images",
    "input_audio": "audio inputs",
    "audio": "audio inputs",
    "file": "files",
    "input_file": "files",
    "video_url": "videos",
}


def check_unsupported(body: dict[str, Any]) -> None:
    """RequestError (400) for a field this server knows but cannot honour."""
    for name, (off_value, what) in _UNSUPPORTED.items():
        value = body.get(name)
        if value is None or value == off_value:
            continue
        raise RequestError(
            f"{name!r} is not supported by this server ({what}); remove it from the request",
            code="unsupported_field",
            param=name,
        )


def check_content_parts(body: dict[str, Any]) -> None:
    """RequestError (400) for a message part the model cannot read (images, audio, files)."""
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            what = _MEDIA_PARTS.get(kind) if isinstance(kind, str) else None
            if what is not None:
                raise RequestError(
                    f"messages[{i}].content[{j}]: {what} are not supported by this model "
                    "(it reads text only); send text content parts",
                    code="unsupported_content",
                    param=f"messages.{i}.content.{j}",
                )


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = False


class _SamplingRequest(_Strict):
    """Fields shared by chat and completions (OpenAI names, then common extensions)."""

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None  # counts and lengths: SamplingParams (both APIs)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # Unsupported unless "off" (check_unsupported): declared so they are not "unknown".
    functions: Any = None
    function_call: Any = None
    # Structured outputs and tools (structured_formats.py, tool_calls.py check them).
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    # Extensions (vLLM names).
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    token_healing: bool = False
    structured_outputs: Any = None

    def structured_output(self) -> StructuredOutputs | None:
        """The constraint ``response_format`` or ``structured_outputs`` asks for (None: free
        text)."""
        extension = from_structured_outputs(self.structured_outputs)
        if extension is not None and self.response_format is not None:
            raise RequestError(
                "give response_format or structured_outputs, not both",
                param="structured_outputs",
            )
        return extension or from_response_format(self.response_format)

    def base_sampling_kwargs(self, vocab_size: int) -> dict[str, Any]:
        """The SamplingParams fields set by this request (None values left to the defaults)."""
        if self.stream_options is not None and not self.stream:
            raise RequestError(
                "stream_options is only allowed with stream=true", param="stream_options"
            )
        values = {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "seed": self.seed,
            "stop": self.stop,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "logit_bias": parse_logit_bias(self.logit_bias, vocab_size),
            "stop_token_ids": check_token_ids(self.stop_token_ids, vocab_size, "stop_token_ids"),
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "skip_special_tokens": self.skip_special_tokens,
            "include_stop_str_in_output": self.include_stop_str_in_output,
            "token_healing": self.token_healing,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def sampling_params(values: dict[str, Any]) -> SamplingParams:
    """SamplingParams, its range checks turned into a 400 naming the field."""
    try:
        return SamplingParams(**values)
    except ValueError as e:  # "top_p must be in (0, 1], got 2": the first word is the field
        message = str(e)
        param = message.split(" ", 1)[0]
        raise RequestError(message, param=param if param.isidentifier() else None) from None


def parse_logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float] | None:
    """OpenAI sends {"token id as string": bias in [-100, 100]}."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise RequestError(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        if not 0 <= token < vocab_size:
            raise RequestError(
                f"logit_bias token id {token} is outside the vocabulary [0, {vocab_size})",
                param="logit_bias",
            )
        if not -100 <= value <= 100:
            raise RequestError(
                f"logit_bias values must be in [-100, 100], got {value}", param="logit_bias"
            )
        out[token] = float(value)
    return out


def check_token_ids(ids: list[int] | None, vocab_size: int, param: str) -> list[int] | None:
    bad = next((t for t in ids or () if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise RequestError(
            f"token id {bad} is outside the vocabulary [0, {vocab_size})", param=param
        )
    return ids


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class MessageToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None  # an earlier answer's reasoning, as this server sent it
    reasoning: str | None = None

    def plain(self) -> dict[str, Any]:
        """The message as chat templates expect it: role and string content; tool calls with
        their arguments as objects (the Hugging Face template convention)."""
        content = self.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": arguments_object(call.function.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        reasoning = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if reasoning is not None:  # the chat template decides whether to show it again
            message["reasoning_content"] = reasoning
        return message


_RESERVED_TEMPLATE_VARIABLES = {"messages", "tools", "add_generation_prompt", "chat_template"}


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None

    def template_kwargs(self) -> dict[str, Any]:
        """``chat_template_kwargs`` (vLLM's extension) as extra chat template variables, e.g.
        {"enable_thinking": false}; the names the server itself sets are refused."""
        kwargs = dict(self.chat_template_kwargs or {})
        reserved = sorted(kwargs.keys() & _RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise RequestError(
                f"chat_template_kwargs may not set {', '.join(reserved)}: use the request's "
                "own fields",
                param="chat_template_kwargs",
            )
        return kwargs

    def to_sampling_params(
        self,
        defaults: dict[str, Any],
        vocab_size: int,
        structured: StructuredOutputs | None = None,
    ) -> SamplingParams:
        """``structured``: the constraint to use (a forced tool call's grammar, or
        ``structured_output()``)."""
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs requires logprobs=true", param="top_logprobs")
        values = {**defaults, **self.base_sampling_kwargs(vocab_size)}
        values["structured"] = structured
        values["max_tokens"] = self.max_completion_tokens or self.max_tokens  # None: to the context
        values["logprobs"] = (self.top_logprobs or 0) if self.logprobs else None
        return sampling_params(values)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # 0: only with echo (scores the prompt)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self, vocab_size: int) -> list[str | list[int]]:
        """The prompt(s): text or token ids; a list of them is a batch."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise RequestError(
                f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}", param="prompt"
            )
        for p in prompts:
            if not isinstance(p, str):
                check_token_ids(p, vocab_size, "prompt")
        return prompts

    def check_supported(self) -> None:
        if self.suffix and self.echo:
            raise RequestError(
                "echo and suffix cannot be combined: the echo would not show the suffix",
                param="echo",
            )
        if self.max_tokens == 0 and not self.echo:
            raise RequestError(
                "max_tokens=0 is only allowed with echo=true (it scores the prompt)",
                param="max_tokens",
            )

    @property
    def generates(self) -> bool:
        """False for echo with max_tokens=0: the prompt is scored, nothing is generated."""
        return self.max_tokens != 0

    def to_sampling_params(self, defaults: dict[str, Any], vocab_size: int) -> SamplingParams:
        if self.best_of is not None and self.best_of != self.n:
            raise RequestError("best_of other than n is not supported", param="best_of")
        if self.tools or self.tool_choice not in (None, "none"):
            raise RequestError("tools are for /v1/chat/completions", param="tools")
        values = {**defaults, **self.base_sampling_kwargs(vocab_size)}
        values["max_tokens"] = self.max_tokens or None  # 0 (echo only): never runs
        values["logprobs"] = self.logprobs
        values["structured"] = self.structured_output()
        return sampling_params(values)
