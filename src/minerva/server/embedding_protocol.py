"""Embedding requests: OpenAI /v1/embeddings, Ollama /api/embed and legacy /api/embeddings.

The vectors are the mean of the prompt's final-norm hidden states, L2-normalised, so their
length is the model's hidden size; ``dimensions`` other than that gets a 400 (no truncation
to fewer dimensions). No torch.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from minerva.errors import RequestError
from minerva.server.ollama_protocol import Options
from minerva.server.openai_protocol import check_token_ids

MAX_INPUTS = 256
"""Inputs in one request: each runs as one engine request, all in the same batch."""


def check_dimensions(dimensions: int | None, hidden_size: int) -> None:
    if dimensions is not None and dimensions != hidden_size:
        raise RequestError(
            f"dimensions={dimensions} is not supported: this model's embeddings have "
            f"{hidden_size} dimensions (remove dimensions or set it to {hidden_size})",
            code="unsupported_field",
            param="dimensions",
        )


def _check_count(n: int, param: str) -> None:
    if n > MAX_INPUTS:
        raise RequestError(f"give at most {MAX_INPUTS} inputs, got {n}", param=param)


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request (``user`` is accepted and ignored)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self, vocab_size: int) -> list[str | list[int]]:
        """The inputs: text or token ids; a list of them is a batch."""
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            inputs = [value]
        else:
            inputs = list(value)
        if not inputs:
            raise RequestError("input must not be empty", param="input")
        _check_count(len(inputs), "input")
        for item in inputs:
            if not item:
                raise RequestError("input must not contain empty strings or lists", param="input")
            if not isinstance(item, str):
                check_token_ids(item, vocab_size, "input")
        return inputs


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    """float: the list as is; base64: little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class OllamaEmbedRequest(BaseModel):
    """Ollama's /api/embed: ``input`` is a string or a list of them."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool = True
    """Ollama's default: cut an input at the end to fit the context (false: a 400)."""
    options: Options | None = None
    keep_alive: float | int | str | None = None
    dimensions: int | None = Field(None, ge=1)

    def inputs(self) -> list[str]:
        """The texts; none for an empty input (as in Ollama, that only loads the model)."""
        inputs = [self.input] if isinstance(self.input, str) else list(self.input)
        if inputs == [""]:
            return []
        _check_count(len(inputs), "input")
        if any(not text for text in inputs):
            raise RequestError("input must not contain empty strings", param="input")
        return inputs

    def context(self, max_model_len: int) -> int:
        num_ctx = self.options.num_ctx if self.options is not None else None
        return min(num_ctx or max_model_len, max_model_len)

    def fit(self, ids: list[int], context: int, index: int) -> list[int]:
        """The input's ids cut to the context (truncate), else a 400 when they do not fit."""
        if len(ids) <= context:
            return ids
        if self.truncate:
            return ids[:context]
        raise RequestError(
            f"input {index} is {len(ids)} tokens, more than the context of {context} tokens: "
            "shorten it, raise num_ctx or set truncate=true",
            code="context_length_exceeded",
            param="input",
        )


class OllamaEmbeddingsRequest(BaseModel):
    """Ollama's legacy /api/embeddings: one ``prompt``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: float | int | str | None = None


def openai_embedding_response(
    model: str, vectors: list[list[float]], num_prompt_tokens: int, encoding_format: str
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
        for i, v in enumerate(vectors)
    ]
    usage = {"prompt_tokens": num_prompt_tokens, "total_tokens": num_prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
