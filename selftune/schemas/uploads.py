"""Uploads: the create and complete requests, the ``upload`` and ``upload.part`` objects (openai ``types/upload``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selftune.schemas.common import Request, Response
from selftune.schemas.files import FileObject
from selftune.statuses import UploadStatus

EXPIRES_AFTER_S = 3600
"""An upload not completed within an hour expires, as OpenAI's do; its parts are deleted."""
MAX_PART_BYTES = 64 * 1024 * 1024


class UploadCreateRequest(Request):
    filename: str = Field(min_length=1)
    purpose: str
    bytes: int = Field(ge=0)
    mime_type: str


class UploadCompleteRequest(Request):
    part_ids: list[str]
    md5: str | None = None


class Upload(Response):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FileObject | None = None


class UploadPart(Response):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
