"""Ollama's ``keep_alive``: how long a model stays loaded after its last request.

A number is seconds; a string is a Go duration ("5m", "1h30m", "300ms") or a number of seconds;
a negative value keeps the model loaded forever, 0 unloads it right after the request.
"""

from __future__ import annotations

import math
import re

from minerva.errors import RequestError

FOREVER = math.inf
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: float | int | str | None, default: float) -> float:
    """Seconds to keep the model loaded (``FOREVER`` for a negative value); ``default`` when
    None. RequestError (400) on anything else."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise _bad(value)
    if isinstance(value, (int, float)):
        return _seconds(float(value), value)
    text = str(value).strip()
    try:
        return _seconds(float(text), value)
    except ValueError:
        pass
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise _bad(value)
    return _seconds(sign * sum(float(n) * _UNITS[u] for n, u in parts), value)


def _seconds(seconds: float, given) -> float:
    if math.isnan(seconds):
        raise _bad(given)
    return FOREVER if seconds < 0 else seconds


def _bad(value) -> RequestError:
    return RequestError(
        f"invalid keep_alive {value!r}: give seconds (300), a duration ('5m', '1h30m'), 0 to "
        "unload after the request or a negative value to keep the model loaded",
        param="keep_alive",
    )
