"""A batch's files: its input read line by line within bounds and checked, its progress files (one
fsynced line per answered request, read back after a crash), and each result line in OpenAI's format.

A line of the input is ``{"custom_id", "method": "POST", "url", "body"}``; it is parsed by
``selftune.safejson``, so a line that is not JSON, or JSON nested too deep or with a number too long,
is that line's error and never stops the batch. Progress lives in ``output.jsonl`` (status 200) and
``errors.jsonl`` (everything else) under ``SELFTUNE_HOME/batches/<id>/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftune import safejson
from selftune.errors import InvalidJSON
from selftune.ids import random_id
from selftune.schemas.batches import BatchError


def read_lines(path: Path) -> Generator[tuple[int, dict[str, Any], BatchError | None]]:
    """(line number, request, problem) for every non-blank line of an input file."""
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = safejson.loads(raw, f"line {line}")
            except InvalidJSON as e:
                yield line, {}, BatchError(code="invalid_json", message=e.message, line=line)
                continue
            if not isinstance(obj, dict):
                yield line, {}, BatchError(code="invalid_request", message="each line must be a JSON object", line=line)
                continue
            yield line, obj, None


def check_line(obj: dict[str, Any], endpoint: str, line: int) -> BatchError | None:
    if not isinstance(obj.get("custom_id"), str) or not obj["custom_id"]:
        return BatchError(code="missing_custom_id", message="each line needs a string custom_id", line=line)
    if obj.get("method") != "POST":
        return BatchError(code="invalid_method", message='method must be "POST"', param="method", line=line)
    if obj.get("url") != endpoint:
        msg = f"url {obj.get('url')!r} is not this batch's endpoint {endpoint!r}; one endpoint per batch"
        return BatchError(code="mismatched_url", message=msg, param="url", line=line)
    if not isinstance(obj.get("body"), dict):
        return BatchError(code="invalid_body", message="body must be a JSON object", param="body", line=line)
    return None


@dataclass
class Progress:
    """What a progress file holds: the ``custom_id``s answered, and the tokens and model of its answers."""

    ids: set[str] = field(default_factory=set)
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None


def progress(path: Path) -> Progress:
    """A progress file read line by line; a torn last line (a crash mid-write) is cut."""
    out = Progress()
    if not path.exists():
        return out
    good = 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            good += len(raw)
            record = json.loads(raw)
            out.ids.add(record["custom_id"])
            if record["response"] is None:  # a line that never ran (batch_expired)
                continue
            body = record["response"]["body"]
            usage = body.get("usage") or {}
            # chat and completions count prompt/completion tokens; responses count input/output tokens.
            out.input_tokens += int(usage.get("prompt_tokens", usage.get("input_tokens", 0)))
            out.output_tokens += int(usage.get("completion_tokens", usage.get("output_tokens", 0)))
            out.model = out.model or body.get("model")
    if good != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good)
    return out


def result_line(
    custom_id: str, response: dict[str, Any] | None = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One line of an output or error file, in OpenAI's format."""
    return {"id": random_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error}


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def append(path: Path, record: dict[str, Any]) -> None:
    with path.open("ab") as f:
        f.write(encode(record))
        f.flush()
        os.fsync(f.fileno())
