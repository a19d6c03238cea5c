"""Tool calls in the model's own format, per model family, read from its chat template.

Each parser knows how its family writes a call, builds the Lark grammar (llguidance, with the
arguments' JSON schema embedded by ``%json``) that forces a call when ``tool_choice`` is
``required`` or names a function, and parses the generated text back into calls:

- ``hermes`` (Qwen2 / Qwen2.5 / Hermes, and the fallback): ``<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>``, one block per call.
- ``llama3`` (Llama 3.1+ JSON tool calling): ``{"name": ..., "parameters": {...}}``, calls
  joined by ``; ``.
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` (the marker is a special
  token, left out of the text, so the parser takes the JSON array with or without it).
No torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from minerva.structured.grammar_compiler import JSON_OPTIONS


@dataclass
class ParsedToolCall:
    name: str
    arguments: str
    """The arguments as JSON text (OpenAI's shape)."""


@dataclass
class ParsedOutput:
    content: str | None
    tool_calls: list[ParsedToolCall]


class ToolParser:
    """Base: one family's call syntax (subclasses set the fields and the two hooks)."""

    name = ""
    arguments_key = "arguments"
    start_markers: tuple[str, ...] = ()
    """Text a call begins with; a streamed answer is held back while it may be one."""

    def call_schema(self, tools: list[dict[str, Any]]) -> dict[str, Any]:
        """JSON schema of one call to any of ``tools`` (OpenAI function definitions)."""
        options = []
        for tool in tools:
            fn = tool["function"]
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            options.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": fn["name"]}, self.arguments_key: params},
                    "required": ["name", self.arguments_key],
                    "additionalProperties": False,
                }
            )
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {**schema, "x-guidance": JSON_OPTIONS}

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        """Lark grammar whose every sentence parses into at least one call."""
        raise NotImplementedError

    def parse(self, text: str, tool_names: set[str]) -> ParsedOutput:
        """Calls to known tools in ``text``; anything else stays content."""
        raise NotImplementedError

    def may_start_call(self, text: str) -> bool:
        """True while ``text`` could still be (or already is) the start of a call."""
        stripped = text.lstrip()
        return any(m.startswith(stripped) or stripped.startswith(m) for m in self.start_markers)

    def _calls(self, objects: list[Any], tool_names: set[str]) -> list[ParsedToolCall] | None:
        """Each object must be {"name": known tool, <arguments_key>: object}; else None."""
        calls = []
        for obj in objects:
            if not isinstance(obj, dict) or obj.get("name") not in tool_names:
                return None
            args = obj.get(self.arguments_key, obj.get("arguments", obj.get("parameters", {})))
            if not isinstance(args, dict):
                return None
            calls.append(ParsedToolCall(obj["name"], json.dumps(args, ensure_ascii=False)))
        return calls


def _lark_string(text: str) -> str:
    return json.dumps(text)


class HermesToolParser(ToolParser):
    name = "hermes"
    start_markers = ("<tool_call>",)
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        schema = json.dumps(self.call_schema(tools))
        repeat = ' ("\\n" call)*' if parallel else ""
        return f'start: call{repeat}\ncall: "<tool_call>\\n" %json {schema} "\\n</tool_call>"\n'

    def parse(self, text: str, tool_names: set[str]) -> ParsedOutput:
        blocks = self._BLOCK.findall(text)
        if not blocks:
            return ParsedOutput(text, [])
        try:
            calls = self._calls([json.loads(b) for b in blocks], tool_names)
        except json.JSONDecodeError:
            calls = None
        if not calls:
            return ParsedOutput(text, [])
        content = self._BLOCK.sub("", text).strip()
        return ParsedOutput(content or None, calls)


class Llama3ToolParser(ToolParser):
    name = "llama3"
    arguments_key = "parameters"
    start_markers = ('{"name"', "<|python_tag|>")

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        schema = json.dumps(self.call_schema(tools))
        repeat = ' ("; " call)*' if parallel else ""
        return f"start: call{repeat}\ncall: %json {schema}\n"

    def parse(self, text: str, tool_names: set[str]) -> ParsedOutput:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return ParsedOutput(text, [])
        objects, decoder, pos = [], json.JSONDecoder(), 0
        try:
            while pos < len(body):
                obj, end = decoder.raw_decode(body, pos)
                objects.append(obj)
                pos = end
                rest = body[pos:].lstrip()
                if not rest:
                    break
                if not rest.startswith(";"):
                    return ParsedOutput(text, [])
                pos = len(body) - len(rest) + 1
                while pos < len(body) and body[pos].isspace():
                    pos += 1
        except json.JSONDecodeError:
            return ParsedOutput(text, [])
        calls = self._calls(objects, tool_names)
        return ParsedOutput(None, calls) if calls else ParsedOutput(text, [])


class MistralToolParser(ToolParser):
    name = "mistral"
    start_markers = ("[TOOL_CALLS]", '[{"name"')

    def grammar(self, tools: list[dict[str, Any]], parallel: bool) -> str:
        array = {"type": "array", "items": self.call_schema(tools), "minItems": 1}
        array["x-guidance"] = JSON_OPTIONS
        if not parallel:
            array["maxItems"] = 1
        return f"start: %json {json.dumps(array)}\n"

    def parse(self, text: str, tool_names: set[str]) -> ParsedOutput:
        body = text.strip().removeprefix("[TOOL_CALLS]").strip()
        if not body.startswith("["):
            return ParsedOutput(text, [])
        try:
            objects, end = json.JSONDecoder().raw_decode(body)
        except json.JSONDecodeError:
            return ParsedOutput(text, [])
        calls = self._calls(objects, tool_names) if isinstance(objects, list) else None
        if not calls or body[end:].strip():
            return ParsedOutput(text, [])
        return ParsedOutput(None, calls)


PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3": Llama3ToolParser,
    "mistral": MistralToolParser,
}


def parser_for_template(chat_template: str | None) -> ToolParser:
    """The family whose tool-call syntax the chat template teaches; hermes otherwise."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return MistralToolParser()
    if "<|python_tag|>" in template or "Environment: ipython" in template:
        return Llama3ToolParser()
    return HermesToolParser()


def template_knows_tools(chat_template: str | None) -> bool:
    """True when the template renders the ``tools`` it is given."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template) is not None


def tools_system_prompt(tools: list[dict[str, Any]], parser: ToolParser) -> str:
    """Describes the tools and the call syntax, for templates that ignore ``tools``."""
    example = {"name": "<function name>", parser.arguments_key: {"<argument>": "<value>"}}
    call = json.dumps(example)
    if parser.name == "hermes":
        call = f"<tool_call>\n{call}\n</tool_call>"
    elif parser.name == "mistral":
        call = f"[{call}]"
    functions = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You can call these functions:\n"
        f"{functions}\n"
        f"To call a function, answer with exactly:\n{call}"
    )
