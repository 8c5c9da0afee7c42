"""``/v1/uploads``: a large file sent in parts (create, add parts, complete, cancel).

Each part is streamed to its own file under ``SELFTUNE_HOME/files/.uploads/<upload id>/`` (never
held in memory). Completing streams the parts, in the order given, through the same path as a
``/v1/files`` upload (``selftune.files.store_file``: size limit, validation of ``fine-tune`` files,
atomic registration), checking the declared size and the optional MD5 on the way. Every move follows
``statuses.UPLOADS``; cancelled, completed and expired uploads lose their parts, and
``expire_uploads`` runs in the server's background.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from selftune.blobs import too_large
from selftune.errors import InvalidRequest, InvalidStatus
from selftune.files import store_file
from selftune.ids import now, random_id
from selftune.schemas.files import UPLOAD_PURPOSES
from selftune.schemas.uploads import (
    EXPIRES_AFTER_S,
    MAX_PART_BYTES,
    Upload,
    UploadCompleteRequest,
    UploadCreateRequest,
    UploadPart,
)
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.files import MULTIPART_SLACK, to_wire
from selftune.services import Core
from selftune.statuses import UploadAction, UploadStatus

router = APIRouter(tags=["uploads"])

PART_ID = re.compile(r"part_[A-Za-z0-9]+")


@router.post("/uploads")
def create_upload(body: UploadCreateRequest, services: ServicesDep, owner: OwnerDep) -> Upload:
    if body.purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {body.purpose!r}; expected one of: {', '.join(UPLOAD_PURPOSES)}.", param="purpose"
        )
    if body.bytes > services.settings.max_upload_bytes:
        raise too_large(services.settings.max_upload_bytes)
    created = now()
    upload = Upload(
        id=random_id("upload_"),
        bytes=body.bytes,
        created_at=created,
        expires_at=created + EXPIRES_AFTER_S,
        filename=body.filename,
        purpose=body.purpose,
        status=UploadStatus.PENDING,
    )
    return services.uploads.insert(owner, upload)


@router.post("/uploads/{upload_id}/parts")
async def add_part(upload_id: str, request: Request, services: ServicesDep, owner: OwnerDep) -> UploadPart:
    upload = _pending(services, owner, upload_id)
    if int(request.headers.get("content-length") or 0) > MAX_PART_BYTES + MULTIPART_SLACK:
        raise InvalidRequest(f"A part holds at most {MAX_PART_BYTES:,} bytes; send smaller parts.", param="data")
    async with request.form(max_files=1, max_fields=4) as form:
        data = form.get("data")
        if not isinstance(data, UploadFile):
            raise InvalidRequest("Send the part as multipart/form-data with a 'data' field.", param="data")
        return await run_in_threadpool(_write_part, services, upload, data.file)


def _write_part(services: Core, upload: Upload, src: BinaryIO) -> UploadPart:
    tmp, _, _ = services.blobs.copy_to_temp(src, MAX_PART_BYTES)
    part = UploadPart(id=random_id("part_"), created_at=now(), upload_id=upload.id)
    folder = _folder(services, upload.id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp.replace(folder / part.id)
    return part


@router.post("/uploads/{upload_id}/complete")
async def complete_upload(
    upload_id: str, body: UploadCompleteRequest, services: ServicesDep, owner: OwnerDep
) -> Upload:
    upload = _pending(services, owner, upload_id)
    folder = _folder(services, upload_id)
    missing = [p for p in body.part_ids if not PART_ID.fullmatch(p) or not (folder / p).is_file()]
    if missing or not body.part_ids:
        unknown = ", ".join(missing) or "none given"
        raise InvalidRequest(f"Unknown part id(s) for {upload_id}: {unknown}", param="part_ids")
    paths = [folder / p for p in body.part_ids]
    total = sum(p.stat().st_size for p in paths)
    if total != upload.bytes:
        raise InvalidRequest(
            f"The parts hold {total:,} bytes but the upload was created for {upload.bytes:,}; "
            "send the missing parts or list them all in part_ids",
            param="part_ids",
        )
    reader = _Parts(paths)

    def check_md5() -> None:
        if body.md5 and reader.md5.hexdigest() != body.md5.lower():
            why = f"The parts' MD5 is {reader.md5.hexdigest()}, not {body.md5}: a part was corrupted or left out"
            raise InvalidRequest(why, param="md5")

    try:
        file = await run_in_threadpool(
            lambda: store_file(
                services.store,
                services.blobs,
                owner,
                reader,  # type: ignore[arg-type]  # read() is all copy_to_temp uses
                upload.filename,
                upload.purpose,
                limit=services.settings.max_upload_bytes,
                verify=check_md5,
            )
        )
    finally:
        reader.close()
    done = services.uploads.apply(upload, UploadAction.COMPLETE, file=to_wire(file))
    shutil.rmtree(folder, ignore_errors=True)
    return done


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, services: ServicesDep, owner: OwnerDep) -> Upload:
    upload = _pending(services, owner, upload_id)
    cancelled = services.uploads.apply(upload, UploadAction.CANCEL)
    shutil.rmtree(_folder(services, upload_id), ignore_errors=True)
    return cancelled


def expire_uploads(services: Core) -> int:
    """Move pending uploads past their time to ``expired`` and delete their parts; how many."""
    n = 0
    for held in services.uploads.in_status(UploadStatus.PENDING):
        if held.obj.expires_at <= now():
            try:
                services.uploads.apply(held.obj, UploadAction.EXPIRE)
            except InvalidStatus:  # completed or cancelled in the meantime
                continue
            shutil.rmtree(_folder(services, held.obj.id), ignore_errors=True)
            n += 1
    return n


def _pending(services: Core, owner: str, upload_id: str) -> Upload:
    """The upload, if parts can still be added to it or it can still be completed or cancelled; an
    upload past its time is expired first, so the error says so."""
    upload = services.uploads.get(owner, upload_id)
    if upload.status == UploadStatus.PENDING and upload.expires_at <= now():
        expire_uploads(services)
        upload = services.uploads.get(owner, upload_id)
    if upload.status != UploadStatus.PENDING:
        raise InvalidRequest(
            f"Upload {upload_id} is {upload.status}; create a new upload",
            param="upload_id",
            code="invalid_upload_status",
        )
    return upload


def _folder(services: Core, upload_id: str) -> Path:
    return services.blobs.root / ".uploads" / upload_id


class _Parts:
    """The parts, one after another, as one readable stream; hashes MD5 on the way."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.current: BinaryIO | None = None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self.current is None:
                if not self.paths:
                    return b""
                self.current = self.paths.pop(0).open("rb")
            chunk = self.current.read(size)
            if chunk:
                self.md5.update(chunk)
                return chunk
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
