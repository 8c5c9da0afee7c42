"""Files below the API: how bytes become a registered File, and the verdict a training file keeps.

- ``store_file``: a stream (an upload, a completed multipart upload's parts) written to a
  temporary file, validated when it is for fine-tuning, then renamed into place and registered:
  a client that disconnects, a crash or a file that fails validation leaves nothing registered.
- ``register_result``: a file selftune made (a job's ``fine-tune-results``, a batch's
  ``batch_output``), registered only once its bytes are in place.
- The verdict: a ``fine-tune`` file is validated once, at upload, and the verdict (a small JSON
  object) is stored in its row beside the SHA-256 of its bytes. Creating a job reads the example
  count from it, the worker checks it and the checksum instead of parsing the file again, and the
  recipe only renders. Files stored before verdicts existed are validated on first use, once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from selftune.blobs import Blobs
from selftune.data.validate import Report, validate_file
from selftune.errors import InvalidFile
from selftune.faults import crash_point
from selftune.ids import derived_id, now, random_id
from selftune.store import FileRecord, Store

VALIDATOR_VERSION = 2
"""Bumped when the validator's rules change, so that older verdicts are taken again."""

PROCESSED = "processed"
"""A File's ``status``: OpenAI's files are ``processed`` once stored, as every file here is."""


def store_file(
    store: Store,
    blobs: Blobs,
    owner: str,
    src: BinaryIO,
    filename: str,
    purpose: str,
    *,
    limit: int,
    expires_after: int | None = None,
    verify: Callable[[], None] | None = None,
    file_id: str | None = None,
) -> FileRecord:
    """Stream ``src`` (at most ``limit`` bytes) into a new file, validated first when it is for
    fine-tuning; ``verify`` checks what the caller hashed on the way, before anything is registered.

    ``file_id`` (``ids.derived_id`` of what makes the file) makes this a step that can be retried:
    when a first try registered the file before a crash, the retry answers with that file."""
    if file_id is not None and (first := store.registered_file(file_id)) is not None:
        return first
    tmp, size, checksum = blobs.copy_to_temp(src, limit)
    try:
        if verify is not None:
            verify()
        validation = None
        if purpose == "fine-tune":  # validated here once; later stages read this verdict
            report, validation = validate_upload(tmp, filename)
            if not report.ok:
                raise InvalidFile(report.summary(max_lines=200), [p.to_dict() for p in report.problems])
        created = now()
        rec = FileRecord(
            id=file_id or random_id("file-"),
            owner=owner,
            filename=filename,
            purpose=purpose,
            size_bytes=size,
            created_at=created,
            expires_at=created + expires_after if expires_after else None,
            status=PROCESSED,
            status_details=None,
            checksum=checksum,
            validation=validation,
        )
        blobs.commit(tmp, rec.id)
        crash_point("file.committed")
        store.insert_file(rec)
    finally:
        tmp.unlink(missing_ok=True)  # gone already when it was committed
    return rec


def register_result(
    store: Store, blobs: Blobs, owner: str, path: Path, filename: str, made_by: str, purpose: str = "fine-tune-results"
) -> FileRecord:
    """A file selftune made (a job's result, a batch's output), copied into place, then registered
    under an id derived from ``made_by`` (the job or batch) and ``filename``: registered once, however
    often the step that registers it runs again after a crash."""
    with path.open("rb") as src:
        file_id = derived_id("file-", made_by, filename)
        return store_file(store, blobs, owner, src, filename, purpose, limit=path.stat().st_size, file_id=file_id)


def upload_file_id(upload_id: str) -> str:
    """The id of the file a multipart upload becomes: a completion retried after a crash (or a lost
    answer) finds the file the first try registered."""
    return derived_id("file-", upload_id)


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
