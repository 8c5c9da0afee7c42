"""Function calling and structured output at serving time: what a request asks for, and the answer parsed.

A request's ``tools``/``functions``, ``tool_choice``/``function_call``, ``parallel_tool_calls`` and
``response_format`` become a ``ToolPlan``: the tools to render into the prompt (through
``selftune.data.render``, as in training), the grammar to constrain decoding with when a call or
JSON is required, and whether to parse the answer for calls. Calls are read in the Hermes format
(``<tool_call>{"name", "arguments"}</tool_call>``) that both the fallback convention and Qwen2.5's
own template use, and as a bare JSON object with ``name`` and ``arguments``/``parameters``
(Llama 3.1's). ``ToolStream`` does the same on a stream, holding back only what may be a tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from selftune.data.render import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from selftune.errors import InvalidRequest
from selftune.ids import random_id
from selftune.inference.constrain import check_grammar, schema_grammar, styled


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str
    """A JSON string, as OpenAI sends them."""


@dataclass
class ToolPlan:
    tools: list[dict[str, Any]] | None = None
    """Rendered into the prompt."""
    parse: bool = False
    """Read the answer for calls (tools given and ``tool_choice`` not ``none``)."""
    grammar: str | None = None
    """Constrain the whole answer (a required call, a JSON response_format)."""
    lazy_grammar: str | None = None
    """``tool_choice: "auto"``: free text, but an answer that opens with a call is held to the
    calls grammar from there on, so a call the model starts is always valid JSON."""
    legacy: bool = False
    """The request used ``functions``: answer with ``function_call``, one call."""
    parallel: bool = True


def plan(
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    parallel: bool | None,
    response_format: dict[str, Any] | None,
    legacy: bool = False,
) -> ToolPlan:
    """Check the request's tool and format parameters and decide how to serve them (400s here)."""
    names = [t["function"]["name"] for t in tools or []]
    out = ToolPlan(tools=tools, legacy=legacy, parallel=parallel is not False and not legacy)
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    param = "function_call" if legacy else "tool_choice"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if "function" in choice else choice.get("name")
        if name not in names:
            raise InvalidRequest(
                f"{param} names the function {name!r}, which is not in {'functions' if legacy else 'tools'} "
                f"(given: {', '.join(names) or 'none'})",
                param=param,
            )
        choice = name
    elif choice not in ("none", "auto", "required"):
        raise InvalidRequest(f"{param} must be 'none', 'auto', 'required' or a named function", param=param)
    if choice != "none" and not tools:
        raise InvalidRequest(f"{param} is {choice!r}, but the request has no tools", param=param)
    out.parse = choice != "none"
    kind = (response_format or {}).get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(f"response_format.type {kind!r} is not one of text, json_object, json_schema")
    if choice not in ("none", "auto") and kind != "text":
        raise InvalidRequest("a required tool call and a JSON response_format exclude each other; ask for one")
    if choice not in ("none", "auto"):
        wanted = [t for t in tools or [] if choice == "required" or t["function"]["name"] == choice]
        out.grammar = _calls_grammar(wanted, many=out.parallel and choice == "required")
    elif choice == "auto" and kind == "text":
        out.lazy_grammar = _calls_grammar(tools or [], many=out.parallel)
    if kind == "json_object":
        out.grammar = schema_grammar({"type": "object"})
    elif kind == "json_schema":
        spec = (response_format or {}).get("json_schema") or {}
        if not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object", param="response_format"
            )
        out.grammar = schema_grammar(spec.get("schema") or {"type": "object"})
    for grammar in (out.grammar, out.lazy_grammar):
        if grammar is not None and (error := check_grammar(grammar)):
            raise InvalidRequest(
                f"the schema cannot be enforced: {error}", param="tools" if out.parse else "response_format"
            )
    return out


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    params = fn.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _calls_grammar(tools: list[dict[str, Any]], many: bool) -> str:
    """A grammar (llguidance's Lark) for one call, or one or more, in the Hermes format."""
    schema = {"anyOf": [_call_schema(t) for t in tools]} if len(tools) > 1 else _call_schema(tools[0])
    body = json.dumps(styled(schema))
    start = 'start: call ("\\n" call)*' if many else "start: call"
    opening, closing = json.dumps(TOOL_CALL_OPEN + "\n"), json.dumps("\n" + TOOL_CALL_CLOSE)
    return f"{start}\ncall: {opening} body {closing}\nbody: %json {body}\n"


# --- reading calls out of an answer ------------------------------------------------------------------


def _call(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ParsedCall(random_id("call_"), obj["name"], text)


def parse_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """The content outside the calls (None if none) and the calls, in order: ``ToolStream`` on the
    whole text, so plain and streamed answers are read alike. A block that is not valid JSON stays
    in the content: it is the model's text, not a call."""
    content, calls = ToolStream().feed(text, final=True)
    if not calls:  # Llama 3.1 style: the whole answer is one JSON call
        try:
            bare = _call(json.loads(text))
        except json.JSONDecodeError:
            bare = None
        if bare is not None:
            return None, [bare]
    return content.strip() or None, calls


@dataclass
class ToolStream:
    """``parse_calls`` for a stream: ``feed`` text pieces, get content to send now and finished calls."""

    buffer: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    in_call: bool = False

    def feed(self, piece: str, final: bool = False) -> tuple[str, list[ParsedCall]]:
        self.buffer += piece
        content, new = "", []
        while True:
            if not self.in_call:
                start = self.buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = 0 if final else _partial_tag(self.buffer)
                    cut = len(self.buffer) - keep
                    content += self.buffer[:cut]
                    self.buffer = self.buffer[cut:]
                    break
                content += self.buffer[:start]
                self.buffer = self.buffer[start:]
                self.in_call = True
            end = self.buffer.find(TOOL_CALL_CLOSE)
            if end < 0 and not final:
                break
            inner = self.buffer[len(TOOL_CALL_OPEN) : end if end >= 0 else len(self.buffer)]
            try:
                call = _call(json.loads(inner))
            except json.JSONDecodeError:
                call = None
            whole = self.buffer[: end + len(TOOL_CALL_CLOSE)] if end >= 0 else self.buffer
            self.buffer = self.buffer[len(whole) :]
            self.in_call = False
            if call is None:
                content += whole  # not a call after all: the model's text
            else:
                new.append(call)
                self.calls.append(call)
            if end < 0:
                break
        if self.calls and content.strip() == "":
            content = ""  # the newlines between calls are not content
        return content, new


def _partial_tag(text: str) -> int:
    """How many characters at the end of ``text`` could start ``<tool_call>``."""
    for n in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-n:]):
            return n
    return 0
