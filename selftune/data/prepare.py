"""``selftune prepare``: turn the shapes datasets come in into OpenAI chat JSONL.

Readers by extension: CSV, TSV, JSON (a list of records, or an object holding one), JSONL,
Parquet (with ``pyarrow``), and chatterbot-style YAML (``conversations: [[question, answer], ...]``).
Each record is recognised by its keys:

- ``messages``: already OpenAI chat format; kept as is;
- Alpaca: ``instruction`` (+ ``input``) -> user, ``output`` -> assistant;
- ShareGPT: ``conversations: [{"from": "human" | "gpt" | "system", "value": ...}]``;
- a chatterbot conversation (a list of turns, alternating user and assistant);
- anything else through column mapping: ``--user-col`` and ``--assistant-col`` (guessed from
  common names such as ``question``/``answer`` or ``prompt``/``completion`` when not given);
- preference pairs for DPO: a prompt column with ``--chosen-col`` and ``--rejected-col`` (guessed
  from ``chosen``/``rejected`` as TRL's data sets name them), written in OpenAI's preference format
  (``input``, ``preferred_output``, ``non_preferred_output``). A chosen or rejected value may be a
  string or, as in TRL's conversational sets, a list of messages ending with the answer.

Exact duplicates are removed, the rest is shuffled with a seed and split, and overlap between the
training and validation sets (the same prompt in both) is reported. Problems name the input file
and line (or record), and nothing is written unless every record converts.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftune.atomic import write_atomic
from selftune.errors import PrepareError

USER_COLUMNS = ("user", "prompt", "question", "q", "input", "query", "instruction")
ASSISTANT_COLUMNS = ("assistant", "completion", "answer", "a", "output", "response", "reply")
CHOSEN_COLUMNS = ("chosen", "preferred", "preferred_output", "accepted")
REJECTED_COLUMNS = ("rejected", "non_preferred", "non_preferred_output", "dispreferred")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Mapping:
    user_col: str | None = None
    assistant_col: str | None = None
    system: str | None = None
    system_col: str | None = None
    chosen_col: str | None = None
    rejected_col: str | None = None


@dataclass
class Prepared:
    train: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    read: int = 0
    duplicates: int = 0
    overlap: int = 0
    """Validation examples whose prompt also appears in the training set."""
    formats: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) pairs; ``where`` is ``file:line`` or ``file:record N``."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except json.JSONDecodeError as e:
                        raise PrepareError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one object") from e
    elif suffix == ".json":
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict):  # an object holding the list, e.g. {"_meta": {...}, "questions": [...]}
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise PrepareError(f"{path}: expected a list of records, or an object with exactly one list in it")
            data = lists[0]
        for n, record in enumerate(data, start=1):
            yield f"{path}:record {n}", record
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise PrepareError("reading Parquet needs pyarrow: pip install pyarrow") from e
        for n, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {n}", record
    elif suffix in (".yml", ".yaml"):
        import yaml

        data = yaml.safe_load(path.read_text("utf-8")) or {}
        for n, conversation in enumerate(data.get("conversations", []), start=1):
            yield f"{path}:conversation {n}", conversation
    else:
        raise PrepareError(
            f"{path}: unknown extension {suffix!r}; use .csv, .tsv, .json, .jsonl, .parquet, .yml or .yaml"
        )


def to_messages(record: Any, mapping: Mapping) -> tuple[str, list[dict[str, str]]]:
    """(format name, messages) for one record; ``PrepareError`` says what is missing."""
    system = [{"role": "system", "content": mapping.system}] if mapping.system else []
    if isinstance(record, list):
        turns = [str(t) for t in record]
        if len(turns) < 2:
            raise PrepareError("a conversation needs at least a question and an answer")
        roles = ["user", "assistant"] * len(turns)
        return "conversation", system + [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
    if not isinstance(record, dict):
        raise PrepareError(f"expected an object, got {type(record).__name__}")
    if mapping.system_col:
        if mapping.system_col not in record:
            raise PrepareError(f"no column {mapping.system_col!r} (from --system-col)")
        system = [{"role": "system", "content": str(record[mapping.system_col])}]
    if "messages" in record and not (mapping.user_col or mapping.assistant_col):
        return "chat", record["messages"]
    if "conversations" in record and not (mapping.user_col or mapping.assistant_col):
        msgs = []
        for turn in record["conversations"]:
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise PrepareError(f"ShareGPT turn with unknown 'from' {turn.get('from')!r}; use human, gpt or system")
            msgs.append({"role": role, "content": str(turn.get("value", ""))})
        return "sharegpt", (system if msgs and msgs[0]["role"] != "system" else []) + msgs
    if {"instruction", "output"} <= record.keys() and not (mapping.user_col or mapping.assistant_col):
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n\n" + str(record["input"])
        return "alpaca", [
            *system,
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": str(record["output"])},
        ]
    user = mapping.user_col or _guess(record, USER_COLUMNS)
    assistant = mapping.assistant_col or _guess(record, ASSISTANT_COLUMNS)
    missing = [c for c in (user, assistant) if c is None or c not in record]
    if missing or user is None or assistant is None:
        raise PrepareError(
            f"cannot tell which columns hold the prompt and the answer (columns: {', '.join(map(str, record))}); "
            "pass --user-col and --assistant-col"
        )
    return "columns", [
        *system,
        {"role": "user", "content": str(record[user])},
        {"role": "assistant", "content": str(record[assistant])},
    ]


def to_example(record: Any, mapping: Mapping) -> tuple[str, dict[str, Any]]:
    """(format name, one JSONL line): a preference pair when the record has chosen and rejected
    columns (named, or guessed), else a chat example (``to_messages``)."""
    if isinstance(record, dict) and not (mapping.chosen_col or mapping.rejected_col):
        chosen, rejected = _guess(record, CHOSEN_COLUMNS), _guess(record, REJECTED_COLUMNS)
    else:
        chosen, rejected = mapping.chosen_col, mapping.rejected_col
    if not isinstance(record, dict) or (chosen is None and rejected is None):
        fmt, messages = to_messages(record, mapping)
        if not any(m.get("role") == "assistant" and str(m.get("content") or "").strip() for m in messages):
            raise PrepareError("no assistant answer (empty or missing); fill it in or drop the record")
        return fmt, {"messages": messages}
    missing = [
        f"no {side} column (name it with {flag})" if c is None else f"no column {c!r} (from {flag})"
        for c, side, flag in ((chosen, "chosen", "--chosen-col"), (rejected, "rejected", "--rejected-col"))
        if c is None or c not in record
    ]
    if missing or chosen is None or rejected is None:
        raise PrepareError(
            f"{'; '.join(missing)} (columns: {', '.join(map(str, record))}); a preference pair needs both answers"
        )
    rest = {k: v for k, v in record.items() if k not in (chosen, rejected)}
    # The prompt through the same column mapping as chat examples, with a placeholder answer.
    _, messages = to_messages(
        {**rest, "__answer__": ""}, Mapping(mapping.user_col, "__answer__", mapping.system, mapping.system_col)
    )
    outputs = [_answer(record[c], c) for c in (chosen, rejected)]
    return "preference", {
        "input": {"messages": messages[:-1]},
        "preferred_output": [{"role": "assistant", "content": outputs[0]}],
        "non_preferred_output": [{"role": "assistant", "content": outputs[1]}],
    }


def _answer(value: Any, column: str) -> str:
    """A chosen or rejected answer: a string, or the last message of a list of messages (TRL's
    conversational format)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise PrepareError(f"column {column!r} is empty; a preference pair needs both answers")
    return value


def _guess(record: dict[str, Any], names: tuple[str, ...]) -> str | None:
    lowered = {str(k).lower(): k for k in record}
    return next((lowered[n] for n in names if n in lowered), None)


def prepare(path: Path, mapping: Mapping, *, val_split: float = 0.0, seed: int = 0) -> Prepared:
    out = Prepared()
    seen: set[str] = set()
    examples: list[dict[str, Any]] = []
    for where, record in read_records(path):
        out.read += 1
        try:
            fmt, example = to_example(record, mapping)
        except PrepareError as e:
            out.problems.append(f"{where}: {e}")
            continue
        out.formats.add(fmt)
        key = json.dumps(example, sort_keys=True)
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        examples.append(example)
    if len({"preference"} & out.formats) and len(out.formats) > 1:
        raise PrepareError(
            f"{path}: some records are preference pairs and some are not ({', '.join(sorted(out.formats))}); "
            "a file holds one format"
        )
    random.Random(seed).shuffle(examples)
    n_valid = round(len(examples) * val_split) if val_split > 0 else 0
    out.valid, out.train = examples[:n_valid], examples[n_valid:]
    train_prompts = {_prompt(e) for e in out.train}
    out.overlap = sum(_prompt(e) in train_prompts for e in out.valid)
    return out


def _prompt(example: dict[str, Any]) -> str:
    if "input" in example:
        return json.dumps(example["input"]["messages"], sort_keys=True)
    return json.dumps([m for m in example["messages"] if m.get("role") != "assistant"], sort_keys=True)


def write_jsonl(path: Path, examples: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
