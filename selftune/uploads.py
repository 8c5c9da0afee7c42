"""Validate a training file once, at upload, and keep the verdict with the file.

The verdict is a small JSON object stored in the file's row (``FileRecord.validation``), beside the
SHA-256 of its bytes (``FileRecord.checksum``). Creating a job reads the example count from it, the
worker checks it and the checksum instead of parsing the file again, and the recipe only renders.
Files stored before verdicts existed (an upgraded database) are validated on first use, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selftune.blobs import Blobs
from selftune.data.validate import Report, validate_file
from selftune.store import FileRecord, Store

VALIDATOR_VERSION = 1
"""Bumped when the validator's rules change, so that older verdicts are taken again."""


def verdict(report: Report) -> dict[str, Any]:
    """What later stages need from a report: whether it passed, its format, size and summary."""
    return {
        "validator": VALIDATOR_VERSION,
        "ok": report.ok,
        "format": report.format,
        "n_examples": report.n_examples,
        "n_lines": report.n_lines,
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "summary": report.summary(max_lines=20),
    }


def validate_upload(path: Path, filename: str) -> tuple[Report, dict[str, Any]]:
    report = validate_file(path, filename=filename)
    return report, verdict(report)


def ensure_validated(store: Store, blobs: Blobs, rec: FileRecord) -> dict[str, Any]:
    """The stored verdict of a ``fine-tune`` file; validates (and stores) it when there is none yet."""
    current = rec.validation
    if current and current.get("validator") == VALIDATOR_VERSION:
        return current
    _, fresh = validate_upload(blobs.path(rec.id), rec.filename)
    store.set_file_validation(rec.id, fresh, rec.checksum or blobs.checksum(rec.id))
    return fresh
