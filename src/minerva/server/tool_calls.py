"""OpenAI ``tools`` / ``tool_choice`` / ``parallel_tool_calls``: validation, the grammar that
forces a call, and the tool calls of an answer in OpenAI's shapes (message and stream deltas).
No torch."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from minerva.errors import RequestError
from minerva.sampling_params import StructuredOutputs
from minerva.server.tool_parsers import (
    ParsedOutput,
    ParsedToolCall,
    ToolParser,
    parser_for_template,
    template_knows_tools,
    tools_system_prompt,
)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ToolPlan:
    """What a request's tools mean for generation and for reading the answer."""

    tools: list[dict[str, Any]]
    mode: str
    """"auto", "required" or "named" ("none" never makes a plan)."""
    parser: ToolParser
    parallel: bool = True
    structured: StructuredOutputs | None = None
    """The grammar forcing a call (required / named)."""
    names: set[str] = field(default_factory=set)

    @property
    def forced(self) -> bool:
        return self.mode != "auto"

    def template_tools(self, chat_template: str | None) -> list[dict[str, Any]] | None:
        """What the chat template gets as ``tools`` (None when it does not render them)."""
        return self.tools if template_knows_tools(chat_template) else None

    def system_prompt(self, chat_template: str | None) -> str | None:
        """A system message describing the tools, for templates that ignore ``tools``."""
        if template_knows_tools(chat_template):
            return None
        return tools_system_prompt(self.tools, self.parser)

    def parse(self, text: str) -> ParsedOutput:
        out = self.parser.parse(text, self.names)
        if not self.parallel and len(out.tool_calls) > 1:
            out.tool_calls = out.tool_calls[:1]
        if self.forced and out.tool_calls:  # the grammar allows only calls: a rest is cut off
            out.content = None
        return out


def _bad(message: str, param: str) -> RequestError:
    return RequestError(message, code="invalid_tools", param=param)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools, each {"type": "function", "function": {"name", ...}}."""
    if not isinstance(tools, list) or not tools:
        raise _bad("tools must be a non-empty list of function tools", "tools")
    names = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _bad(
                f"tools[{i}].function.name must be 1-64 letters, digits, _ or -, got {name!r}",
                "tools",
            )
        if name in names:
            raise _bad(f"tools[{i}]: the function name {name!r} appears twice", "tools")
        names.add(name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
    return tools


def tool_plan(
    tools: Any, tool_choice: Any, parallel_tool_calls: Any, chat_template: str | None
) -> ToolPlan | None:
    """The plan for a request's tool fields; None when no call can be made (no tools, or
    tool_choice "none")."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):  # as OpenAI: only allowed when tools are given
            raise _bad("tool_choice needs tools", "tool_choice")
        return None
    tools = check_tools(tools)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _bad("parallel_tool_calls must be true or false", "parallel_tool_calls")
    parallel = parallel_tool_calls is not False
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    names = {t["function"]["name"] for t in tools}
    parser = parser_for_template(chat_template)
    plan = ToolPlan(tools, "auto", parser, parallel, names=names)
    if choice == "auto":
        return plan
    if choice == "required":
        plan.mode = "required"
        chosen = tools
    else:
        name = _named_choice(choice)
        if name not in names:
            raise _bad(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        plan.mode, chosen, plan.parallel = (
            "named",
            [t for t in tools if t["function"]["name"] == name],
            False,
        )
    plan.structured = StructuredOutputs(grammar=parser.grammar(chosen, plan.parallel))
    return plan


def _named_choice(choice: Any) -> str:
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(fn, dict):
        raise _bad(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    name = fn.get("name")
    if not isinstance(name, str):
        raise _bad("tool_choice.function.name must be a string", "tool_choice")
    return name


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def message_tool_calls(calls: list[ParsedToolCall]) -> list[dict[str, Any]]:
    """``choices[i].message.tool_calls`` of a chat completion."""
    return [
        {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for c in calls
    ]


def ollama_tool_calls(calls: list[ParsedToolCall]) -> list[dict[str, Any]]:
    """Ollama's ``message.tool_calls``: arguments as an object."""
    return [
        {"function": {"index": i, "name": c.name, "arguments": arguments_object(c.arguments)}}
        for i, c in enumerate(calls)
    ]


def delta_tool_calls(calls: list[ParsedToolCall]) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` of the stream chunks announcing ``calls``: per call one chunk
    with its index, id, type, name and empty arguments, then one with the arguments."""
    deltas = []
    for i, c in enumerate(calls):
        head = {"index": i, "id": new_call_id(), "type": "function"}
        deltas.append([{**head, "function": {"name": c.name, "arguments": ""}}])
        deltas.append([{"index": i, "function": {"arguments": c.arguments}}])
    return deltas


def arguments_object(arguments: str) -> Any:
    """Arguments as a JSON value (templates and Ollama want objects, OpenAI sends text)."""
    try:
        return json.loads(arguments)
    except (json.JSONDecodeError, TypeError):
        return arguments


class ToolCallStream:
    """One streamed choice of a request with tools: text is held back while it may be a
    call; a call is sent as tool_calls deltas when the answer ends, other text as content."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""
        self.is_content = False

    def feed(self, delta: str) -> str:
        """Content to send now ("" while the text may still be a call)."""
        if self.is_content:
            return delta
        self.held += delta
        if self.plan.forced or self.plan.parser.may_start_call(self.held):
            return ""
        self.is_content, text, self.held = True, self.held, ""
        return text

    def finish(self) -> tuple[str, list[list[dict[str, Any]]]]:
        """(content still held, tool_calls deltas) once the choice has finished."""
        if self.is_content or not self.held:
            return self.held, []
        parsed = self.plan.parse(self.held)
        if not parsed.tool_calls:
            return self.held, []
        return parsed.content or "", delta_tool_calls(parsed.tool_calls)


def with_tool_prompt(
    messages: list[dict[str, Any]], plan: ToolPlan | None, chat_template: str | None
) -> list[dict[str, Any]]:
    """``messages`` with the tools described in the system message, for templates that do not
    render ``tools`` themselves."""
    prompt = plan.system_prompt(chat_template) if plan is not None else None
    if prompt is None:
        return messages
    if messages and messages[0].get("role") == "system":
        first = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def chat_message(text: str, finish_reason: str | None, plan: ToolPlan | None):
    """(``choices[i].message``, finish_reason) of a finished chat answer."""
    if plan is not None:
        parsed = plan.parse(text)
        if parsed.tool_calls:
            calls = message_tool_calls(parsed.tool_calls)
            message = {"role": "assistant", "content": parsed.content, "tool_calls": calls}
            return message, "tool_calls"
    return {"role": "assistant", "content": text}, finish_reason
