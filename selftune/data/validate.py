"""Validate fine-tuning JSONL, line by line, reporting every problem with its line number.

This is the one validator: the server runs it on every ``purpose=fine-tune`` upload, and the CLI
(``selftune validate``) and the trainer call the same ``validate_file``.

It implements the checks of OpenAI's cookbook data-prep notebook, with the same keys
(``data_type``, ``missing_messages_list``, ``message_missing_key``, ``message_unrecognized_key``,
``unrecognized_role``, ``missing_content``, ``example_missing_assistant_message``), plus ours:
invalid JSON or encoding, the preference (DPO) format, ``weight`` values, mixed formats, duplicates,
and function calling (``tools`` and ``functions``, call ids, names and JSON arguments).

Four line formats are accepted (one per file; the first line decides):

- chat: ``{"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}``
- prompts: chat lines whose last message is the user's, for reinforcement jobs, which sample the
  answers themselves; every other key of a line is the grader's (``{{item.key}}``)
- preference: ``{"input": {"messages": [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}``
- completion: ``{"prompt": "...", "completion": "..."}``, the legacy format OpenAI trained
  ``babbage-002`` and ``davinci-002`` on; the model is then called through ``/v1/completions``.

The file is read as a stream; memory use does not grow with the file (beyond one digest per line
for duplicate detection).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selftune import safejson
from selftune.data.tool_checks import check_tools
from selftune.errors import InvalidJSON

Level = Literal["error", "warning"]
Format = Literal["chat", "prompts", "preference", "completion"]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id")
CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
COMPLETION_KEYS = ("prompt", "completion")
MIN_EXAMPLES = 10
_NOUNS: dict[str | None, str] = {"prompts": "prompt(s) for a reinforcement job"}
MAX_RECORDED_PROBLEMS = 10_000


@dataclass(frozen=True)
class Problem:
    """One finding. ``line`` is 1-based; 0 means the file as a whole."""

    line: int
    level: Level
    key: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.level}: {self.message} [{self.key}]"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "level": self.level, "key": self.key, "message": self.message}


@dataclass
class Report:
    """Everything ``validate`` learned about a file."""

    filename: str
    format: Format | None = None
    n_examples: int = 0
    n_lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    omitted_problems: int = 0
    n_missing_system: int = 0
    n_missing_user: int = 0
    n_duplicates: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, line: int, level: Level, key: str, message: str) -> None:
        if len(self.problems) >= MAX_RECORDED_PROBLEMS:
            self.omitted_problems += 1
            return
        self.problems.append(Problem(line, level, key, message))

    def summary(self, *, max_lines: int | None = None) -> str:
        """Human-readable text: a headline, then one ``file:line: level: message`` row per problem."""
        errs, warns, noun = self.errors, self.warnings, _NOUNS.get(self.format, "example(s)")
        head = (
            f"{self.filename} has {len(errs)} error(s) and {len(warns)} warning(s) "
            f"in {self.n_lines} line(s); fix every error below and upload it again."
            if errs
            else f"{self.filename}: {self.n_examples} {noun}, no errors, {len(warns)} warning(s)."
        )
        rows = [p.format(self.filename) for p in errs + warns]
        if max_lines is not None and len(rows) > max_lines:
            rows = [*rows[:max_lines], f"... and {len(rows) - max_lines} more"]
        if self.omitted_problems:
            rows.append(f"... and {self.omitted_problems} more problem(s) not recorded")
        return "\n".join([head, *rows])


def validate_file(path: str | Path, *, filename: str | None = None) -> Report:
    """Validate a JSONL file on disk. ``filename`` is the name to show in messages."""
    p = Path(path)
    with p.open("rb") as f:
        return validate_lines(f, filename=filename or p.name)


def validate_lines(lines: Iterable[bytes], *, filename: str = "<data>") -> Report:
    """Validate raw JSONL lines (bytes, as read from a binary file)."""
    report = Report(filename=filename)
    seen: dict[bytes, int] = {}
    blank_run: list[int] = []
    for lineno, raw in enumerate(lines, start=1):
        report.n_lines = lineno
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            report.add(lineno, "error", "invalid_encoding", f"not valid UTF-8 (byte {e.start}); save as UTF-8")
            continue
        if lineno == 1:
            text = text.lstrip("\ufeff")
        if not text:
            blank_run.append(lineno)
            continue
        for b in blank_run:
            report.add(b, "warning", "blank_line", "blank line; it is ignored")
        blank_run = []
        try:
            obj = safejson.loads(text, "the line")
        except InvalidJSON as e:  # not JSON, or a parser bomb (a 5,000-digit number, nesting 20,000 deep)
            report.add(lineno, "error", "invalid_json", _json_hint(text, e.reason, lineno))
            continue
        report.n_examples += 1
        digest = hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).digest()
        if digest in seen:
            report.n_duplicates += 1
            report.add(lineno, "warning", "duplicate_example", f"exact duplicate of line {seen[digest]}")
        else:
            seen[digest] = lineno
        _check_example(obj, lineno, report)

    if report.n_examples == 0 and not report.errors:
        report.add(0, "error", "empty_file", "the file holds no examples; write one JSON object per line")
    if report.format == "chat":
        if report.n_missing_system:
            report.add(0, "warning", "missing_system", f"{report.n_missing_system} example(s) have no system message")
        if report.n_missing_user:
            report.add(0, "warning", "missing_user", f"{report.n_missing_user} example(s) have no user message")
    if report.format == "completion" and report.ok:
        report.add(
            0,
            "warning",
            "legacy_completion_format",
            "prompt/completion lines train the model to continue text without its chat template: call "
            "the fine-tuned model through /v1/completions (client.completions.create) with prompts written "
            'like these, or convert the file to {"messages": [...]} with `selftune prepare` to chat with it',
        )
    if 0 < report.n_examples < MIN_EXAMPLES:
        report.add(
            0,
            "warning",
            "few_examples",
            f"only {report.n_examples} example(s); a fine-tuning job needs at least {MIN_EXAMPLES} (50-100 is typical)",
        )
    return report


def _json_hint(text: str, msg: str, lineno: int) -> str:
    if lineno == 1 and text.startswith("["):
        return msg + "; the file looks like one JSON array, but JSONL needs one object per line"
    if lineno == 1 and not text.startswith("{") and ("," in text or "\t" in text):
        return msg + "; the file looks like CSV/TSV: convert it with `selftune prepare FILE -o train.jsonl`"
    if text.startswith("{") and not text.endswith("}"):
        return msg + "; is one JSON object split across several lines? JSONL needs one object per line"
    return msg


def _check_example(obj: Any, line: int, report: Report) -> None:
    if not isinstance(obj, dict):
        hint = "; the file looks like one JSON array, but JSONL needs one object per line" if line == 1 else ""
        report.add(line, "error", "data_type", f"each line must be a JSON object, not {type(obj).__name__}{hint}")
        return
    if "messages" in obj:
        prompts = report.format == "prompts" or (report.format is None and _ends_with_user(obj))
        fmt: Format = "prompts" if prompts else "chat"
    elif any(k in obj for k in PREFERENCE_KEYS):
        fmt = "preference"
    elif any(k in obj for k in COMPLETION_KEYS):
        fmt = "completion"
    else:
        keys = ", ".join(sorted(obj)) or "none"
        report.add(line, "error", "missing_messages_list", f'no "messages" list (keys found: {keys})')
        return
    if report.format is None:
        report.format = fmt
    elif report.format != fmt:
        report.add(
            line,
            "error",
            "mixed_formats",
            f"this line is in the {fmt} format but earlier lines are {report.format}; use one format per file",
        )
        return
    if fmt == "chat":
        _check_chat(obj, line, report)
    elif fmt == "prompts":
        _check_prompts(obj, line, report)
    elif fmt == "completion":
        _check_completion(obj, line, report)
    else:
        _check_preference(obj, line, report)


def _check_chat(obj: dict[str, Any], line: int, report: Report) -> None:
    for k in obj:
        if k not in CHAT_KEYS:
            report.add(line, "warning", "unrecognized_key", f'unknown key "{k}" is ignored')
    messages = _conversation(obj, line, report)
    if messages is None:
        return
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "system" not in roles and "developer" not in roles:
        report.n_missing_system += 1
    if "user" not in roles:
        report.n_missing_user += 1
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistants:
        report.add(
            line,
            "error",
            "example_missing_assistant_message",
            "no assistant message to learn from (a file whose first line ends with the user's message "
            "holds prompts for a reinforcement job instead)",
        )
    elif all(m.get("weight") == 0 for m in assistants):
        report.add(
            line,
            "error",
            "no_trainable_messages",
            'every assistant message has "weight": 0, so nothing would be trained',
        )
    elif roles and roles[-1] != "assistant":
        report.add(line, "warning", "trailing_messages", "messages after the last assistant turn are not trained")


def _conversation(obj: dict[str, Any], line: int, report: Report) -> list[Any] | None:
    """A chat or prompts line's messages and tools, checked; None when there is no list of messages."""
    messages = obj.get("messages")
    if not messages or not isinstance(messages, list):
        report.add(line, "error", "missing_messages_list", '"messages" must be a non-empty list of messages')
        return None
    _check_messages(messages, line, report, where="")
    check_tools(obj, messages, line, report, where="")
    return messages


def _ends_with_user(obj: dict[str, Any]) -> bool:
    messages = obj.get("messages")
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and messages[-1].get("role") == "user"
    )


def _check_prompts(obj: dict[str, Any], line: int, report: Report) -> None:
    """A reinforcement job's line: the conversation up to the user's last message (the model
    samples the answer); keys besides the chat ones are the grader's, so none is unknown."""
    if _conversation(obj, line, report) is None:
        return
    if not _ends_with_user(obj):
        report.add(
            line,
            "error",
            "invalid_last_message",
            "the last message must be the user's: a reinforcement job samples the answer itself (earlier "
            "lines of this file end with the user's message; a file of whole conversations trains a "
            "supervised job)",
        )


def _check_completion(obj: dict[str, Any], line: int, report: Report) -> None:
    for k in obj:
        if k not in COMPLETION_KEYS:
            report.add(line, "warning", "unrecognized_key", f'unknown key "{k}" is ignored')
    for key in COMPLETION_KEYS:
        value = obj.get(key)
        if not isinstance(value, str):
            shown = "missing" if key not in obj else f"a {type(value).__name__}"
            report.add(line, "error", f"invalid_{key}", f'"{key}" must be a string, not {shown}')
        elif key == "completion" and not value.strip():
            report.add(line, "error", "empty_completion", '"completion" is empty, so there is nothing to learn')


def _check_preference(obj: dict[str, Any], line: int, report: Report) -> None:
    for k in obj:
        if k not in PREFERENCE_KEYS:
            hint = " (the right names are preferred_output / non_preferred_output)" if "completion" in k else ""
            report.add(line, "error", "unrecognized_key", f'unknown key "{k}" in a preference example{hint}')
    outputs: list[tuple[str, dict[str, Any]]] = []
    for key in ("preferred_output", "non_preferred_output"):
        out = obj.get(key)
        if not isinstance(out, list) or len(out) != 1 or not isinstance(out[0], dict):
            report.add(
                line,
                "error",
                f"invalid_{key}",
                f'"{key}" must be a list holding exactly one assistant message',
            )
            continue
        msg = out[0]
        if msg.get("role") != "assistant":
            report.add(line, "error", f"invalid_{key}", f'the message in "{key}" must have role "assistant"')
        elif "weight" in msg:
            report.add(line, "error", "invalid_weight", f'the message in "{key}" cannot have a "weight"; it is trained')
        else:
            # Text, tool calls or both, checked as any assistant turn is (against the input's tools).
            _check_messages([msg], line, report, where=f"{key} ")
            outputs.append((f"{key} message 1", msg))
    inp = obj.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list) or not inp["messages"]:
        report.add(line, "error", "missing_input", '"input" must be an object with a non-empty "messages" list')
    else:
        _check_messages(inp["messages"], line, report, where="input ")
        check_tools(inp, inp["messages"], line, report, where="input ", outputs=outputs)
        last = inp["messages"][-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            report.add(line, "error", "invalid_input", "input messages must end with a user turn, not assistant")
    if len(outputs) == 2 and _same_output(outputs[0][1], outputs[1][1]):
        report.add(
            line,
            "warning",
            "identical_outputs",
            "preferred_output and non_preferred_output are the same, so this pair teaches nothing",
        )


def _same_output(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return content_text(a.get("content")).strip() == content_text(b.get("content")).strip() and a.get(
        "tool_calls"
    ) == b.get("tool_calls")


def _check_messages(messages: list[Any], line: int, report: Report, *, where: str) -> None:
    for i, m in enumerate(messages, start=1):
        at = f"{where}message {i}"
        if not isinstance(m, dict):
            report.add(line, "error", "data_type", f"{at} must be an object, not {type(m).__name__}")
            continue
        role = m.get("role")
        has_call = bool(m.get("tool_calls") or m.get("function_call"))
        if "role" not in m or ("content" not in m and not has_call):
            missing = "role" if "role" not in m else "content"
            report.add(line, "error", "message_missing_key", f'{at} has no "{missing}"')
        for k in m:
            if k not in MESSAGE_KEYS:
                report.add(line, "error", "message_unrecognized_key", f'{at} has unknown key "{k}"')
        if "role" in m and role not in ROLES:
            guess = difflib.get_close_matches(str(role), ROLES, n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            report.add(
                line,
                "error",
                "unrecognized_role",
                f"{at} has role {role!r}, which is not one of {', '.join(ROLES)}{hint}",
            )
        if "content" in m or not has_call:
            problem = _content_problem(m.get("content"), allow_null=has_call)
            if problem:
                report.add(line, "error", "missing_content", f"{at} {problem}")
        if "weight" in m:
            if role != "assistant":
                report.add(line, "error", "invalid_weight", f'{at}: "weight" is only allowed on assistant messages')
            elif m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                report.add(line, "error", "invalid_weight", f'{at}: "weight" must be 0 or 1, not {m["weight"]!r}')


def _content_problem(content: Any, *, allow_null: bool) -> str | None:
    if content is None:
        return None if allow_null else "has no content (null)"
    if isinstance(content, str):
        return None if content.strip() else "has empty content"
    if isinstance(content, list):
        if not content:
            return "has an empty list of content parts"
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                return f"has a content part of type {kind!r}; only text parts can be trained"
        return None
    return f"content must be a string or a list of text parts, not {type(content).__name__}"


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or text parts joined (the shape the API accepts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
