"""Exports (a selftune extension, not part of OpenAI's API): the request, the export object, lists."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from selftune.schemas.common import Request, Response
from selftune.statuses import ExportStatus


class ExportCreate(Request):
    model: str
    format: str
    """``adapter``, ``merged``, ``gguf`` or ``ollama``."""
    quantize: str | None = None
    """gguf and ollama: ``f16`` (default), ``q8_0`` or ``q4_k_m``."""
    lora: bool = False
    """gguf and ollama: the base GGUF with the GGUF LoRA beside it, instead of one merged file."""


class ExportProgress(Response):
    stage: str
    done: int
    total: int


class ExportFile(Response):
    name: str
    bytes: int
    sha256: str


class ExportError(Response):
    code: str
    message: str


class Export(Response):
    id: str
    object: Literal["export"] = "export"
    created_at: int
    model: str
    format: str
    quantize: str | None
    lora: bool
    status: ExportStatus
    progress: ExportProgress | None
    folder: str
    """The top folder of the downloaded archive."""
    estimated_bytes: int
    bytes: int | None = None
    files: list[ExportFile] = Field(default_factory=list)
    verification: dict[str, Any] | None = None
    run: dict[str, str] = Field(default_factory=dict)
    """Commands that run the export, from inside its folder."""
    error: ExportError | None = None


class ExportList(Response):
    object: Literal["list"] = "list"
    data: list[Export]


class ExportDeleted(Response):
    id: str
    object: Literal["export"] = "export"
    deleted: bool = True
