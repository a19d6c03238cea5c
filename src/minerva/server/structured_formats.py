"""OpenAI ``response_format``, vLLM's ``structured_outputs`` extension and Ollama ``format`` ->
StructuredOutputs, with a 400 naming what is wrong. No torch."""

from __future__ import annotations

from typing import Any

from minerva.errors import RequestError
from minerva.sampling_params import StructuredOutputs


def _bad(message: str, param: str) -> RequestError:
    return RequestError(message, code="invalid_structured_output", param=param)


def schema_with_strictness(schema: Any, strict: bool, param: str) -> dict[str, Any]:
    """The schema to enforce; without ``strict`` keywords the grammar engine cannot express
    are ignored instead of refused (llguidance's lenient mode)."""
    if not isinstance(schema, dict):
        raise _bad("the JSON schema must be a JSON object", param)
    if strict:
        return schema
    guidance = dict(schema.get("x-guidance") or {})
    guidance.setdefault("lenient", True)
    return {**schema, "x-guidance": guidance}


def from_response_format(value: Any) -> StructuredOutputs | None:
    """OpenAI's ``response_format``: text (None), json_object or json_schema."""
    param = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _bad('response_format must be an object with a "type"', param)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputs(json_object=True)
    if kind != "json_schema":
        raise _bad(
            f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
            param,
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _bad('response_format json_schema needs {"name": ..., "schema": {...}}', param)
    schema = spec.get("schema", {"type": "object"})
    strict = spec.get("strict") is True
    return StructuredOutputs(json_schema=schema_with_strictness(schema, strict, param))


_STRUCTURED_KEYS = {
    "json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
    "json_object": "json_object",
}  # fmt: skip


def from_structured_outputs(value: Any) -> StructuredOutputs | None:
    """vLLM's ``structured_outputs`` extension: exactly one of json (a schema), regex, choice
    (a list of strings), grammar (Lark or GBNF) or json_object (true)."""
    param = "structured_outputs"
    if value is None:
        return None
    given = {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else {}
    if not isinstance(value, dict) or len(given) != 1 or next(iter(given)) not in _STRUCTURED_KEYS:
        raise _bad(
            "structured_outputs must be an object with exactly one of "
            f"{', '.join(_STRUCTURED_KEYS)}",
            param,
        )
    ((key, spec),) = given.items()
    if key == "json":
        if isinstance(spec, str):
            return StructuredOutputs(json_schema=spec)
        return StructuredOutputs(json_schema=schema_with_strictness(spec, True, param))
    if key == "json_object":
        if spec is not True:
            raise _bad("structured_outputs.json_object must be true", param)
        return StructuredOutputs(json_object=True)
    if key == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise _bad("structured_outputs.choice must be a non-empty list of strings", param)
        return StructuredOutputs(choice=spec)
    if not isinstance(spec, str) or not spec:
        raise _bad(f"structured_outputs.{key} must be a non-empty string", param)
    return StructuredOutputs(**{_STRUCTURED_KEYS[key]: spec})


def from_ollama_format(value: Any) -> StructuredOutputs | None:
    """Ollama's ``format``: "" / None (free text), "json", or a JSON schema object."""
    if value is None or value == "":
        return None
    if value == "json":
        return StructuredOutputs(json_object=True)
    if isinstance(value, dict):
        return StructuredOutputs(json_schema=schema_with_strictness(value, False, "format"))
    raise _bad('format must be "json" or a JSON schema object', "format")
