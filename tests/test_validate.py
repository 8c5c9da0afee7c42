"""The validator: every defect is found, with its line number, its cookbook key, and a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selftune.data.validate import validate_file, validate_lines


def lines(*rows: object) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows]


def chat(*messages: dict[str, object]) -> dict[str, object]:
    return {"messages": list(messages)}


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be nice"}


@pytest.mark.parametrize(
    ("row", "key"),
    [
        ("not json", "invalid_json"),
        ([1, 2], "data_type"),
        ({"msgs": []}, "missing_messages_list"),
        ({"messages": []}, "missing_messages_list"),
        (chat(U, {"role": "assistant"}), "message_missing_key"),
        (chat(U, {"content": "x"}, A), "message_missing_key"),
        (chat(U, {**A, "mood": "x"}), "message_unrecognized_key"),
        (chat({"role": "human", "content": "x"}, A), "unrecognized_role"),
        (chat(U, {"role": "assistant", "content": ""}), "missing_content"),
        (chat(U, {"role": "assistant", "content": 5}), "missing_content"),
        (chat(U, {"role": "assistant", "content": [{"type": "image_url", "image_url": {}}]}), "missing_content"),
        (chat(S, U), "example_missing_assistant_message"),
        (chat(U, {**A, "weight": 2}), "invalid_weight"),
        (chat({**U, "weight": 1}, A), "invalid_weight"),
        (chat(U, {**A, "weight": 0}), "no_trainable_messages"),
        ({"prompt": "a", "completion": "b"}, "mixed_formats"),
    ],
)
def test_each_defect_is_reported_with_its_key_and_line(row: object, key: str) -> None:
    report = validate_lines(lines(chat(S, U, A), row), filename="d.jsonl")
    found = [(p.line, p.key) for p in report.errors]
    assert (2, key) in found, report.summary()
    assert not report.ok


def test_seven_defects_report_every_line(tmp_path: Path) -> None:
    good = chat(S, U, A)
    rows = [
        good,
        "{not json",  # 2
        good,
        chat({"role": "assitant", "content": "x"}, A),  # 4: typo in role
        chat(S, U),  # 5: no assistant
        good,
        [1],  # 7: not an object
        chat(U, {**A, "weight": 3}),  # 8
        chat(U, {"role": "assistant", "content": None}),  # 9
        good,
        {"text": "hello"},  # 11
        chat(U, {**A, "extra": 1}),  # 12
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines(*rows)))
    report = validate_file(path)
    assert sorted({p.line for p in report.errors}) == [2, 4, 5, 7, 8, 9, 11, 12]
    text = report.summary()
    for n in (2, 4, 5, 7, 8, 9, 11, 12):
        assert f"bad.jsonl:{n}: error:" in text
    assert "did you mean 'assistant'?" in text


def test_valid_chat_file_passes_with_cookbook_warnings() -> None:
    report = validate_lines(lines(*[chat(U, A)] * 3, chat(S, U, A)))
    assert report.ok and report.format == "chat" and report.n_examples == 4
    keys = {p.key for p in report.warnings}
    assert {"missing_system", "duplicate_example", "few_examples"} <= keys
    assert report.n_missing_system == 3 and report.n_duplicates == 2


FN = {"name": "answer", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
TOOLS = [{"type": "function", "function": FN}]


def call(*names: str, args: str = '{"q": "x"}') -> dict[str, object]:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": args}} for i, n in enumerate(names)
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str = "c0") -> dict[str, object]:
    return {"role": "tool", "content": "42", "tool_call_id": call_id}


def test_tool_calls_and_text_parts_are_accepted() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    report = validate_lines(lines({"messages": [parts, call("answer"), result(), A], "tools": TOOLS}))
    assert report.ok and not [w for w in report.warnings if w.line], report.summary()
    legacy = {"role": "assistant", "content": None, "function_call": {"name": "answer", "arguments": "{}"}}
    function = {"role": "function", "name": "answer", "content": "42"}
    report = validate_lines(lines({"messages": [U, legacy, function, A], "functions": [FN]}))
    assert report.ok, report.summary()


@pytest.mark.parametrize(
    ("row", "key"),
    [
        ({"messages": [U, call("answer", args="{q: x}"), result(), A], "tools": TOOLS}, "invalid_tool_call_arguments"),
        ({"messages": [U, call("answer", args='["x"]'), result(), A], "tools": TOOLS}, "invalid_tool_call_arguments"),
        ({"messages": [U, call("lookup"), result(), A], "tools": TOOLS}, "unknown_function"),
        ({"messages": [U, call("answer"), result("c9"), A], "tools": TOOLS}, "unknown_tool_call_id"),
        (
            {"messages": [U, call("answer"), {"role": "tool", "content": "42"}, A], "tools": TOOLS},
            "missing_tool_call_id",
        ),
        (
            {
                "messages": [U, call("answer", "answer"), result(), result("c1"), A],
                "tools": TOOLS,
                "parallel_tool_calls": False,
            },
            "parallel_tool_calls",
        ),
        ({"messages": [U, call("answer"), result(), A], "tools": [{"type": "function"}]}, "invalid_tools"),
        (
            {"messages": [U, {"role": "assistant", "content": None, "tool_calls": [{"id": "c0"}]}, A], "tools": TOOLS},
            "invalid_tool_call",
        ),
    ],
)
def test_what_function_calling_cannot_train_is_an_error(row: dict[str, object], key: str) -> None:
    report = validate_lines(lines(chat(U, A), row), filename="calls.jsonl")
    errors = [p for p in report.errors if p.key == key]
    assert errors and all(p.line == 2 for p in report.errors), report.summary()
    assert "calls.jsonl:2: error:" in report.summary()


def test_calls_without_tools_are_a_warning() -> None:
    report = validate_lines(lines(chat(U, call("answer"), result(), A)))
    assert report.ok and [w.key for w in report.warnings if w.line] == ["missing_tools"], report.summary()


def test_preference_format() -> None:
    good = {"input": {"messages": [U]}, "preferred_output": [A], "non_preferred_output": [{**A, "content": "meh"}]}
    report = validate_lines(lines(good, good))
    assert report.ok and report.format == "preference"
    mixed = validate_lines(lines(good, chat(U, A)))
    assert [(p.line, p.key) for p in mixed.errors] == [(2, "mixed_formats")]
    half = {"input": {"messages": [U]}, "preferred_output": [A]}
    old_names = {"input": {"messages": [U]}, "preferred_completion": [A], "non_preferred_output": [A]}
    ends_with_assistant = {**good, "input": {"messages": [U, A]}}
    report = validate_lines(lines(good, half, old_names, ends_with_assistant))
    found = [(p.line, p.key) for p in report.errors]
    assert (2, "invalid_non_preferred_output") in found
    assert (3, "unrecognized_key") in found and "preferred_output / non_preferred_output" in report.summary()
    assert (4, "invalid_input") in found


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"question,answer\nhi,hello\n", "looks like CSV"),
        (b'[{"messages": []}]\n', "one JSON array"),
        (b'{"messages": [\n', "split across several lines"),
    ],
)
def test_common_mistakes_get_a_hint(content: bytes, hint: str) -> None:
    report = validate_lines(content.splitlines(keepends=True))
    assert hint in report.summary()


def test_bad_encoding_blank_lines_and_empty_file() -> None:
    report = validate_lines([b"\xff\xfe\n", b"\n", json.dumps(chat(U, A)).encode()])
    assert [(p.line, p.key) for p in report.errors] == [(1, "invalid_encoding")]
    assert (2, "blank_line") in [(p.line, p.key) for p in report.warnings]
    empty = validate_lines([b"\n", b"  \n"])
    assert [p.key for p in empty.errors] == ["empty_file"]
    # A trailing newline and a UTF-8 byte-order mark are not problems.
    ok = validate_lines([b"\xef\xbb\xbf" + json.dumps(chat(U, A)).encode() + b"\n", b"\n"])
    assert ok.ok and not [p for p in ok.warnings if p.key == "blank_line"]


def test_prompt_completion_lines_are_the_legacy_completion_format() -> None:
    good = {"prompt": "Q: 2+2?\n\nA:", "completion": " 4\n"}
    report = validate_lines(lines(*[good] * 10), filename="legacy.jsonl")
    assert report.ok and report.format == "completion", report.summary()
    assert [p.key for p in report.warnings if p.key != "duplicate_example"] == ["legacy_completion_format"]
    assert "/v1/completions" in report.summary()
    bad = validate_lines(
        lines(good, {"prompt": "x"}, {"prompt": "x", "completion": " "}, {"prompt": 3, "completion": "y"}, chat(U, A)),
        filename="legacy.jsonl",
    )
    found = [(p.line, p.key) for p in bad.errors]
    assert found == [
        (2, "invalid_completion"),
        (3, "empty_completion"),
        (4, "invalid_prompt"),
        (5, "mixed_formats"),
    ], bad.summary()
    assert 'legacy.jsonl:2: error: "completion" must be a string, not missing' in bad.summary()
