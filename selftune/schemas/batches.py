"""Batches: the create request, the ``batch`` object and its list page (openai ``types/batch.py``).

Its status machine is ``statuses.BATCHES``; ``selftune.batch_runner`` moves batches along it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selftune.schemas.common import Request, Response, is_none
from selftune.schemas.responses import ResponseUsage
from selftune.statuses import BatchStatus

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/completions")
WINDOW_SECONDS = {"24h": 24 * 3600}


class BatchCreateRequest(Request):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class RequestCounts(Response):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(Response):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(Response):
    object: Literal["list"] = "list"
    data: list[BatchError]


class Batch(Response):
    """Times and files not reached yet are left out (the official schema types them as non-null)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = Field(default=None, exclude_if=is_none)
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = Field(default=None, exclude_if=is_none)
    error_file_id: str | None = Field(default=None, exclude_if=is_none)
    created_at: int
    in_progress_at: int | None = Field(default=None, exclude_if=is_none)
    expires_at: int | None = Field(default=None, exclude_if=is_none)
    finalizing_at: int | None = Field(default=None, exclude_if=is_none)
    completed_at: int | None = Field(default=None, exclude_if=is_none)
    failed_at: int | None = Field(default=None, exclude_if=is_none)
    expired_at: int | None = Field(default=None, exclude_if=is_none)
    cancelling_at: int | None = Field(default=None, exclude_if=is_none)
    cancelled_at: int | None = Field(default=None, exclude_if=is_none)
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = Field(default=None, exclude_if=is_none)
    """The model that answered (the first answered line's), set when the batch ends."""
    usage: ResponseUsage | None = Field(default=None, exclude_if=is_none)
    """Tokens of the answered lines, summed when the batch ends."""


class BatchList(Response):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
