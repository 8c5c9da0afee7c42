"""Files: ``FileObject``, its list page and the delete result (openai ``types/file_object.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selftune.schemas.common import Response, is_none

Purpose = Literal[
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
]
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


class FileObject(Response):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    """Size of the file in bytes."""
    created_at: int
    expires_at: int | None = Field(default=None, exclude_if=is_none)
    """Omitted when the file never expires (the official schema types it as a plain integer)."""
    filename: str
    purpose: Purpose
    status: Literal["uploaded", "processed", "error"]
    """Deprecated by OpenAI but required by ``wait_for_processing`` and the legacy SDK."""
    status_details: str | None = Field(default=None, exclude_if=is_none)


class FileList(Response):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    """Always present: without it the SDK's auto-pagination never stops."""


class FileDeleted(Response):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
