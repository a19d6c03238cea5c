"""Checks every field of a request against the model once, when the engine accepts it.

Whatever a request carries must fail here, as a RequestError naming the field, never later on
the engine thread (where an exception stops the engine for every user). Returns a private copy
of the sampling params with normalised fields, so a caller changing its object afterwards
cannot reach the engine either.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass

from minerva.errors import RequestError
from minerva.sampling_params import SamplingParams, StructuredOutputs

_INT_FIELDS = ("n", "top_k", "min_tokens", "max_tokens", "logprobs", "seed")
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output", "token_healing")
_NUMBER_FIELDS = (
    "temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty",
)  # fmt: skip


@dataclass
class ValidatedRequest:
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int
    """Resolved: the params' max_tokens, or what the context leaves after the prompt (1 for
    a pooling request, which generates nothing)."""


def check_token_ids(ids: object, vocab_size: int, param: str, what: str) -> list[int]:
    """A list of ints in [0, vocab_size); raises RequestError naming `param`."""
    if not isinstance(ids, (list, tuple)):
        raise RequestError(f"{what} must be a list of token ids", param=param)
    if not set(map(type, ids)) <= {int}:  # the usual case first: plain ints, one C loop
        bad = next((t for t in ids if not _is_int(t)), None)
        if bad is not None:
            raise RequestError(f"{what} must be integers, got {bad!r}", param=param)
        ids = [int(t) for t in ids]
    if ids and not (min(ids) >= 0 and max(ids) < vocab_size):
        bad = next(t for t in ids if not 0 <= t < vocab_size)
        raise RequestError(
            f"{what} id {bad} is outside the vocabulary [0, {vocab_size}); "
            "use ids from this model's tokenizer",
            param=param,
        )
    return list(ids)


def validate_request(
    prompt_token_ids: object, params: object, vocab_size: int, max_model_len: int
) -> ValidatedRequest:
    """Check a tokenized prompt and its sampling params against the model; raise RequestError."""
    if not isinstance(params, SamplingParams):
        raise RequestError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
    ids = check_token_ids(prompt_token_ids, vocab_size, "prompt", "prompt token")
    if not ids:
        raise RequestError("the prompt is empty: give at least one token", param="prompt")
    params = _checked_params(params, vocab_size)
    n, limit = len(ids), max_model_len
    if params.pooling is not None:  # nothing is generated: the prompt alone must fit
        if n > limit:
            raise RequestError(
                f"This model's maximum context length is {limit} tokens. However, the input is "
                f"{n} tokens. Shorten the input.",
                code="context_length_exceeded",
                param="input",
            )
        return ValidatedRequest(ids, params, 1)
    max_tokens = params.max_tokens if params.max_tokens is not None else limit - n
    if n + max_tokens > limit or max_tokens < 1:
        raise RequestError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{n + max(max_tokens, 1)} tokens ({n} in the prompt, {max(max_tokens, 1)} for the "
            "completion). Shorten the prompt or lower max_tokens.",
            code="context_length_exceeded",
            param="max_tokens" if n < limit else "prompt",
        )
    return ValidatedRequest(ids, params, max_tokens)


def _checked_params(params: SamplingParams, vocab_size: int) -> SamplingParams:
    params = copy.copy(params)
    for name in _INT_FIELDS:
        value = getattr(params, name)
        if value is not None and not _is_int(value):
            raise RequestError(f"{name} must be an integer, got {value!r}", param=name)
    for name in _BOOL_FIELDS:
        if not isinstance(getattr(params, name), bool):
            raise RequestError(f"{name} must be true or false", param=name)
    for name in _NUMBER_FIELDS:  # before the range checks, which would compare text to numbers
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RequestError(f"{name} must be a number, got {value!r}", param=name)
    if params.structured is not None and not isinstance(params.structured, StructuredOutputs):
        raise RequestError(
            f"structured must be a StructuredOutputs, got {type(params.structured).__name__}",
            param="structured",
        )
    try:
        params.__post_init__()  # ranges, and list/str normalisation on the copy
    except (TypeError, ValueError) as e:
        name = str(e).split(" ", 1)[0]  # its messages start with the field's name
        raise RequestError(str(e), param=name if hasattr(params, name) else None) from None
    if not all(isinstance(s, str) for s in params.stop):
        raise RequestError("stop must be a string or a list of strings", param="stop")
    params.stop = list(params.stop)
    params.stop_token_ids = check_token_ids(
        params.stop_token_ids, vocab_size, "stop_token_ids", "stop token"
    )
    params.logit_bias = _checked_logit_bias(params.logit_bias, vocab_size)
    if params.logprobs is not None and params.logprobs > vocab_size:
        raise RequestError(
            f"logprobs={params.logprobs} asks for more alternatives than the vocabulary's "
            f"{vocab_size} tokens; lower logprobs",
            param="logprobs",
        )
    for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
        value = getattr(params, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RequestError(f"{name} must be a finite number, got {value!r}", param=name)
    return params


def _checked_logit_bias(bias: object, vocab_size: int) -> dict[int, float] | None:
    """Keys as int token ids in the vocabulary (JSON keys arrive as strings), finite values."""
    if not bias:
        return None
    if not isinstance(bias, dict):
        raise RequestError("logit_bias must map token ids to numbers", param="logit_bias")
    checked: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        if not 0 <= token < vocab_size:
            raise RequestError(
                f"logit_bias token id {token} is outside the vocabulary [0, {vocab_size}); "
                "use ids from this model's tokenizer",
                param="logit_bias",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(
                f"logit_bias values must be numbers, got {value!r}", param="logit_bias"
            )
        if not math.isfinite(value):
            raise RequestError(
                f"logit_bias values must be finite, got {value}; -100 bans a token",
                param="logit_bias",
            )
        checked[token] = float(value)
    return checked


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
