"""Reading a request body as a JSON object: every way it can be malformed is a 400 in the API's
error shape, never a 500 (bad bytes, too-deep nesting, integers past Python's digit limit,
strings the tokenizer cannot encode). No torch."""

from __future__ import annotations

import json
from typing import Any

from minerva.server.api_errors import APIError


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` parsed; APIError(400) when it is not a JSON object of encodable text."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError(400, "The body's JSON is nested too deeply", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise APIError(400, _json_problem(e), code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The body must be a JSON object", code="invalid_json")
    where = lone_surrogate_path(data)
    if where is not None:
        raise APIError(
            400,
            f"{where or 'the body'} contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
            "escape), which is not text: send valid Unicode",
            param=where or None,
            code="invalid_value",
        )
    return data


def _json_problem(e: ValueError) -> str:
    if "integer string conversion" in str(e):  # sys.get_int_max_str_digits(), 4300 by default
        return "The body is not valid JSON for this server: an integer literal has too many digits"
    return f"The body is not valid JSON: {e}"


def lone_surrogate_path(data: Any) -> str | None:
    """The dotted path ('messages.0.content') of the first string or key holding a lone
    surrogate, or None. Iterative: the body's nesting is bounded by the parser only."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if not _encodable(key):
                    return path or "a key"
                stack.append((item, child))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(value))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
