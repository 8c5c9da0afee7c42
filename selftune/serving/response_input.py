"""A response's ``input``, read: as the chat messages the model is prompted with, and as the items
``GET /responses/{id}/input_items`` lists later; and the items a response writes out.

Text is one user turn; function calls join the assistant turn they follow, and their outputs
become tool turns. ``text.format`` becomes chat's ``response_format``.
"""

from __future__ import annotations

from typing import Any

from selftune.errors import InvalidRequest
from selftune.ids import random_id
from selftune.schemas.responses import (
    TEXT_PARTS,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputMessageItem,
    InputText,
    OutputMessage,
    OutputText,
    ResponseCreateRequest,
)
from selftune.statuses import ItemStatus


def read_input(items: str | list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[InputItem]]:
    """``input`` as chat messages (text is one user turn; function calls join the assistant turn they
    follow, and their outputs become tool turns) and as the items ``input_items`` lists later (with
    the ids the client gave them, or new ones)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}], [_input_message("user", items, None)]
    out: list[dict[str, Any]] = []
    listed: list[InputItem] = []
    for i, item in enumerate(items):
        kind = item.get("type") or "message"
        given = item.get("id") if isinstance(item.get("id"), str) else None
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(
                    f"input[{i}].role must be user, system, developer or assistant", param=f"input[{i}]"
                )
            text = _text(item.get("content"), i)
            out.append({"role": role, "content": text})
            listed.append(
                output_message(text, item_id=given) if role == "assistant" else _input_message(role, text, given)
            )
        elif kind == "function_call":
            name, arguments = str(item.get("name")), str(item.get("arguments", "{}"))
            call = {"id": item.get("call_id"), "type": "function", "function": {"name": name, "arguments": arguments}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            listed.append(
                FunctionCallItem(
                    id=given or random_id("fc_"), call_id=str(item.get("call_id")), name=name, arguments=arguments
                )
            )
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, i)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
            listed.append(
                FunctionCallOutputItem(id=given or random_id("fco_"), call_id=str(item.get("call_id")), output=text)
            )
        else:
            raise InvalidRequest(
                f"input[{i}] is a {kind!r} item; send messages, function_call and function_call_output items",
                param=f"input[{i}]",
            )
    return out, listed


def _input_message(role: str, text: str, item_id: str | None) -> InputMessageItem:
    return InputMessageItem(id=item_id or random_id("msg_"), role=role, content=[InputText(text=text)])


def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRequest(
                f"input[{i}] has a {kind!r} content part: these models read text only", param=f"input[{i}].content"
            )
    return "".join(str(p.get("text", "")) for p in parts)


def response_format(body: ResponseCreateRequest) -> dict[str, Any] | None:
    """``text.format`` in chat's ``response_format`` shape (the schema sits one level up in Responses)."""
    fmt = (body.text or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    return fmt or None


def output_message(text: str, status: ItemStatus = ItemStatus.COMPLETED, item_id: str | None = None) -> OutputMessage:
    return OutputMessage(id=item_id or random_id("msg_"), status=status, content=[OutputText(text=text)])
