"""Ollama's Modelfile (``FROM``, ``PARAMETER``, ...) and /api/create's fields, as one recipe.

Minerva makes a new model of the models directory from a local model (a path or a name the
directory has) and sampling defaults; what it cannot honour (an adapter, a system prompt or
template baked into the model) is a 400 naming the instruction, never silently dropped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from minerva.server.api_errors import APIError

PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repeat_penalty": "repetition_penalty",
}
"""Ollama PARAMETER -> generation_config.json key (the defaults the engine reads)."""
_UNSUPPORTED = {
    "ADAPTER": "LoRA adapters are not supported",
    "SYSTEM": "a built-in system prompt is not supported: send it as the first message",
    "TEMPLATE": "a custom template is not supported: the model's own chat template is used",
    "MESSAGE": "built-in messages are not supported: send them with the request",
}


@dataclass
class Recipe:
    base: str
    """FROM: a local path, or the name of a model of the directory."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """generation_config.json keys and values."""


def parse_modelfile(text: str) -> Recipe:
    """A Modelfile's recipe; 400 on what it cannot honour."""
    base, parameters = None, {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            base = _unquote(rest)
        elif word == "PARAMETER":
            name, _, value = rest.partition(" ")
            parameters.update(_parameters({name: _number(value.strip())}))
        elif word in ("LICENSE",):
            continue  # informational
        else:
            why = _UNSUPPORTED.get(word, "it is not a Modelfile instruction")
            raise APIError(400, f"Modelfile line {number} ({word}): {why}", code="unsupported")
    if not base:
        raise APIError(400, "the Modelfile needs a FROM line naming a local model or path")
    return Recipe(base, parameters)


def recipe_from_request(data: dict) -> Recipe:
    """/api/create's body: ``modelfile`` (older clients) or ``from`` + ``parameters``."""
    if isinstance(data.get("modelfile"), str):
        return parse_modelfile(data["modelfile"])
    for key, word in (("adapters", "ADAPTER"), ("system", "SYSTEM"), ("template", "TEMPLATE"),
                      ("messages", "MESSAGE"), ("quantize", None)):  # fmt: skip
        if data.get(key):
            why = _UNSUPPORTED[word] if word else "quantizing on create is not supported"
            raise APIError(400, f"'{key}': {why}", param=key, code="unsupported")
    if data.get("files"):
        raise APIError(
            400, "'files' (uploaded blobs) are not supported: use 'from' with a local path",
            param="files", code="unsupported",
        )  # fmt: skip
    base = data.get("from")
    if not isinstance(base, str) or not base:
        raise APIError(400, "'from' must name a local model or path", param="from")
    return Recipe(base, _parameters(data.get("parameters") or {}))


def _parameters(given: dict) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise APIError(400, "'parameters' must be an object", param="parameters")
    out = {}
    for name, value in given.items():
        if name not in PARAMETERS:
            raise APIError(
                400,
                f"parameter {name!r} cannot be a model default here; supported: "
                f"{', '.join(PARAMETERS)} (set others per request in 'options')",
                param="parameters", code="unsupported",
            )  # fmt: skip
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise APIError(400, f"parameter {name!r} must be a number, got {value!r}")
        out[PARAMETERS[name]] = value
    return out


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _unquote(text: str) -> str:
    try:
        parts = shlex.split(text)
    except ValueError:
        return text
    return parts[0] if len(parts) == 1 else text
