"""Chat templates: Jinja2 in an immutable sandbox, with the globals Hugging Face templates use.

Rendering matches ``transformers``' ``apply_chat_template(tokenize=False)``: trim_blocks and
lstrip_blocks, ``loopcontrols``, ``{% generation %}`` blocks, ``raise_exception``,
``strftime_now``, and a ``tojson`` filter that neither escapes HTML nor non-ASCII text.
Templates come from the Hub, so they are untrusted code: the sandbox refuses attribute tricks
such as ``''.__class__.__mro__`` and we turn that into a clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from minerva.errors import ModelLoadError, RequestError

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _TemplateRaised(jinja2.TemplateError):
    """raise_exception() was called by the template: it refuses these messages."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes <>&' for HTML; chat templates want the plain JSON text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict(...)`` for templates without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore names (no poking at CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's own trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for key in attrs:
            _Namespace._check(key)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, key: str, value: Any) -> None:
        _Namespace._check(key)
        jinja2.utils.Namespace.__setitem__(self, key, value)

    @staticmethod
    def _check(key: Any) -> None:
        if isinstance(key, str) and key.startswith("_"):
            raise SecurityError(f"namespace attribute {key!r} starts with an underscore")


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text; we render it as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_Namespace,
    )
    return env


@functools.lru_cache(maxsize=64)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template once; later calls with the same source reuse it."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ModelLoadError(
            f"the chat template has a Jinja syntax error at line {e.lineno}: {e.message}; "
            "fix chat_template in tokenizer_config.json (or chat_template.jinja)"
        ) from None


def select_chat_template(
    model_template: str | dict[str, str] | None,
    requested: str | None = None,
    tools: list[Any] | None = None,
) -> str:
    """Pick the template source: ``requested`` (a name or Jinja text) or the model's own;
    among named templates prefer "tool_use" when tools are given, else "default"."""
    if isinstance(model_template, dict):
        if requested is not None:
            return model_template.get(requested, requested)
        if tools and "tool_use" in model_template:
            return model_template["tool_use"]
        if "default" in model_template:
            return model_template["default"]
        raise ModelLoadError(
            f"this model has several chat templates ({', '.join(sorted(model_template))}) and "
            "none is named 'default'; pass the name of the one to use"
        )
    if requested is not None:
        return requested
    if model_template is None:
        raise RequestError(
            "this model has no chat template; pass a prompt instead or add chat_template to "
            "tokenizer_config.json",
            param="messages",
        )
    return model_template


def _plain(value: Any) -> Any:
    """A copy made of JSON types only: rich objects have methods the sandbox doesn't vet."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses such as enums carry extra methods
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RequestError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} objects",
            param="messages",
        )
    checked = []
    for i, message in enumerate(_plain(list(messages))):
        if not isinstance(message, dict):
            raise RequestError(
                f"messages[{i}] must be an object, got {message!r}", param="messages"
            )
        # APIs send content=None / tool_calls=None; templates handle a missing key better.
        message = {k: v for k, v in message.items() if v is not None}
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise RequestError(f"messages[{i}] needs a 'role' string", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise RequestError(
                f"messages[{i}].content must be a string or a list of parts, "
                f"got {type(content).__name__}",
                param="messages",
            )
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:  # templates read reasoning_content (gpt-oss reads thinking)
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        checked.append(message)
    return checked


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **context: Any,
) -> str:
    """Render a chat; ``context`` holds bos_token/eos_token/... and template options."""
    if tools is not None and (
        not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools)
    ):
        raise RequestError("tools must be a list of JSON-schema objects", param="tools")
    compiled = compile_chat_template(template)
    variables = {"documents": None, **_plain(context)}
    variables.update(
        messages=_check_messages(messages),
        tools=_plain(tools),
        add_generation_prompt=add_generation_prompt,
    )
    try:
        return compiled.render(**variables)
    except SecurityError as e:
        raise ModelLoadError(
            f"the chat template tried an operation the sandbox forbids ({e}); it was stopped. "
            "Replace the chat template with a trusted one"
        ) from None
    except _TemplateRaised as e:
        raise RequestError(
            f"the chat template rejected the messages: {e}", param="messages"
        ) from None
    except Exception as e:  # undefined fields, wrong types: the messages don't fit the template
        raise RequestError(
            f"could not render the chat template for these messages ({type(e).__name__}: {e})",
            param="messages",
        ) from None
