"""Validation of function calling in training data: ``tools``, ``functions``, calls and their results.

Part of the one validator (``selftune.data.validate``), which calls ``check_tools`` on every chat
line (and on a preference line's ``input``). What cannot be trained as written is an error with its
line: a call to a function ``tools`` does not define, arguments that are not a JSON object in a
string, a tool result whose ``tool_call_id`` no earlier call has, several calls in one turn of a
line that sets ``parallel_tool_calls: false``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from selftune import safejson
from selftune.errors import InvalidJSON

if TYPE_CHECKING:
    from selftune.data.validate import Report


def _function_names(obj: dict[str, Any], line: int, report: Report) -> set[str] | None:
    """The functions a line defines (``tools`` or legacy ``functions``); None when it defines none."""
    names: set[str] = set()
    defined = False
    for key in ("tools", "functions"):
        if key not in obj:
            continue
        defined = True
        items = obj[key]
        if not isinstance(items, list):
            report.add(line, "error", f"invalid_{key}", f'"{key}" must be a list')
            continue
        for i, item in enumerate(items, start=1):
            fn = item.get("function") if key == "tools" and isinstance(item, dict) else item
            ok_type = key == "functions" or (isinstance(item, dict) and item.get("type") == "function")
            if not ok_type or not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                shape = '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
                want = shape if key == "tools" else '{"name": ..., "parameters": {...}}'
                report.add(line, "error", f"invalid_{key}", f"{key}[{i}] must look like {want}")
                continue
            if "parameters" in fn and not isinstance(fn["parameters"], dict):
                report.add(
                    line,
                    "error",
                    f"invalid_{key}",
                    f'{key}[{i}] ({fn["name"]}): "parameters" must be a JSON schema object',
                )
            names.add(fn["name"])
    return names if defined else None


def _check_call(call: Any, at: str, names: set[str] | None, line: int, report: Report) -> None:
    """One tool call (``tool_calls[i]``, or a legacy ``function_call``): a named, defined function and
    arguments that are a JSON object in a string, as OpenAI sends them."""
    fn = call.get("function") if isinstance(call, dict) and "function" in call else call
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        report.add(line, "error", "invalid_tool_call", f'{at} needs a "function" with a "name" and "arguments"')
        return
    name = fn["name"]
    if names is not None and name not in names:
        known = ", ".join(sorted(names)) or "none"
        report.add(
            line, "error", "unknown_function", f"{at} calls {name!r}, which tools does not define (defined: {known})"
        )
    args = fn.get("arguments")
    if not isinstance(args, str):
        report.add(line, "error", "invalid_tool_call_arguments", f'{at} ({name}): "arguments" must be a JSON string')
        return
    try:
        parsed = safejson.loads(args, "arguments")
    except InvalidJSON as e:
        report.add(line, "error", "invalid_tool_call_arguments", f"{at} ({name}): arguments are {e.reason}")
        return
    if not isinstance(parsed, dict):
        report.add(line, "error", "invalid_tool_call_arguments", f"{at} ({name}): arguments must be a JSON object")


def check_tools(
    obj: dict[str, Any],
    messages: list[Any],
    line: int,
    report: Report,
    *,
    where: str,
    outputs: Sequence[tuple[str, Any]] = (),
) -> None:
    """Function calling: what cannot be trained as written is reported, never silently trained otherwise.
    ``outputs``: (label, message) answers that continue ``messages`` (a preference line's two
    outputs), checked against the same tools."""
    names = _function_names(obj, line, report)
    one_call = obj.get("parallel_tool_calls") is False
    call_ids: set[str] = set()
    warned = False
    labelled = [(f"{where}message {i}", m) for i, m in enumerate(messages, start=1)]
    for at, m in [*labelled, *outputs]:
        if not isinstance(m, dict):
            continue
        calls = m.get("tool_calls")
        if "tool_calls" in m and not isinstance(calls, list):
            report.add(line, "error", "invalid_tool_call", f'{at}: "tool_calls" must be a list')
            continue
        for k, call in enumerate(calls or [], start=1):
            if (
                not isinstance(call, dict)
                or not isinstance(call.get("id"), str)
                or call.get("type", "function") != "function"
            ):
                report.add(
                    line, "error", "invalid_tool_call", f'{at} tool_calls[{k}] needs an "id" and "type": "function"'
                )
            else:
                call_ids.add(call["id"])
            _check_call(call, f"{at} tool_calls[{k}]", names, line, report)
        if m.get("function_call") is not None:
            _check_call(m["function_call"], f"{at} function_call", names, line, report)
        n_calls = len(calls or [])
        if one_call and n_calls > 1:
            report.add(
                line,
                "error",
                "parallel_tool_calls",
                f"{at} makes {n_calls} calls, but this line sets parallel_tool_calls false",
            )
        if (calls or m.get("function_call")) and names is None and not warned:
            warned = True
            report.add(
                line,
                "warning",
                "missing_tools",
                f'{at} calls a function, but the line has no "tools": the model trains without seeing their schemas',
            )
        if m.get("role") == "tool":
            tool_id = m.get("tool_call_id")
            if not isinstance(tool_id, str):
                report.add(line, "error", "missing_tool_call_id", f'{at} is a tool result without a "tool_call_id"')
            elif tool_id not in call_ids:
                report.add(
                    line,
                    "error",
                    "unknown_tool_call_id",
                    f"{at} answers tool_call_id {tool_id!r}, which no earlier assistant message called",
                )
        if m.get("role") == "function" and not isinstance(m.get("name"), str):
            report.add(
                line, "error", "message_missing_key", f'{at} is a function result without the function\'s "name"'
            )
