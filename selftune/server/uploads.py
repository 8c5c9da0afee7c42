"""``/v1/uploads``: a large file sent in parts (create, add parts, complete, cancel).

Each part is streamed to its own file under ``SELFTUNE_HOME/files/.uploads/<upload id>/`` (never
held in memory). Completing streams the parts, in the order given, through the same path as a
``/v1/files`` upload (``selftune.files.store_file``: size limit, validation of ``fine-tune`` files,
atomic registration), checking the declared size and the optional MD5 on the way. Every move follows
``statuses.UPLOADS``; cancelled, completed and expired uploads lose their parts (the sweeper,
``selftune.sweeper``, expires them in the server's background).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from selftune.atomic import publish, remove_tree
from selftune.blobs import too_large
from selftune.errors import InvalidRequest
from selftune.faults import crash_point
from selftune.files import store_file, upload_file_id
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
from selftune.server.edge import Route
from selftune.server.files import to_wire
from selftune.services import Core
from selftune.statuses import UploadAction, UploadStatus
from selftune.sweeper import Sweeper

router = APIRouter(tags=["uploads"], route_class=Route)

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
    upload = await run_in_threadpool(_pending, services, owner, upload_id)
    async with request.form(max_files=1, max_fields=4) as form:
        data = form.get("data")
        if not isinstance(data, UploadFile):
            raise InvalidRequest("Send the part as multipart/form-data with a 'data' field.", param="data")
        return await run_in_threadpool(_write_part, services, upload, data.file)


def _write_part(services: Core, upload: Upload, src: BinaryIO) -> UploadPart:
    """The part, streamed to its own file; refused when with the parts already sent it would hold more
    than the bytes the upload was created for (an upload cannot become a way to fill the disk)."""
    folder = services.blobs.parts(upload.id)
    sent = sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0
    left = upload.bytes - sent
    refusal = InvalidRequest(
        f"the parts sent so far hold {sent:,} of the {upload.bytes:,} bytes this upload was created for, and this "
        "part holds more than the rest; send only the bytes of the file (or create a new upload)",
        param="data",
    )
    tmp, _, _ = services.blobs.copy_to_temp(src, max(0, left), refusal if left < MAX_PART_BYTES else None)
    part = UploadPart(id=random_id("part_"), created_at=now(), upload_id=upload.id)
    crash_point("upload.part")
    folder.mkdir(parents=True, exist_ok=True)
    publish(tmp, folder / part.id)
    if services.storage.remote:  # the next part, or the completion, may reach another server
        services.storage.put(_part_key(upload.id, part.id), folder / part.id)
    return part


def _part_key(upload_id: str, part_id: str) -> str:
    return f"uploads/{upload_id}/{part_id}"


def _fetch_parts(services: Core, upload_id: str, part_ids: list[str]) -> None:
    """With a remote store, the parts other servers received, brought here for the completion."""
    folder = services.blobs.parts(upload_id)
    for part_id in part_ids:
        if services.storage.remote and PART_ID.fullmatch(part_id) and not (folder / part_id).is_file():
            services.storage.get(_part_key(upload_id, part_id), folder / part_id)


@router.post("/uploads/{upload_id}/complete")
def complete_upload(upload_id: str, body: UploadCompleteRequest, services: ServicesDep, owner: OwnerDep) -> Upload:
    """The parts, in the order given, become one file (validated like any upload). The file's id is
    the upload's own (``files.upload_file_id``): a completion retried after a crash or a lost answer
    finds the file its first try registered, and never makes a second one."""
    upload = _pending(services, owner, upload_id)
    folder = services.blobs.parts(upload_id)
    _fetch_parts(services, upload_id, body.part_ids)
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
        file = store_file(
            services.store,
            services.blobs,
            owner,
            reader,  # type: ignore[arg-type]  # read() is all copy_to_temp uses
            upload.filename,
            upload.purpose,
            limit=services.settings.max_upload_bytes,
            verify=check_md5,
            file_id=upload_file_id(upload_id),
        )
    finally:
        reader.close()
    crash_point("upload.registered")
    done = services.uploads.apply(upload, UploadAction.COMPLETE, file=to_wire(file))
    remove_tree(folder, services.blobs.root)
    if services.storage.remote:
        services.storage.delete(f"uploads/{upload_id}")
    return done


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(upload_id: str, services: ServicesDep, owner: OwnerDep) -> Upload:
    upload = _pending(services, owner, upload_id)
    cancelled = services.uploads.apply(upload, UploadAction.CANCEL)
    remove_tree(services.blobs.parts(upload_id), services.blobs.root)
    if services.storage.remote:
        services.storage.delete(f"uploads/{upload_id}")
    return cancelled


def _pending(services: Core, owner: str, upload_id: str) -> Upload:
    """The upload, if parts can still be added to it or it can still be completed or cancelled; an
    upload past its time is expired first, so the error says so."""
    upload = services.uploads.get(owner, upload_id)
    if upload.status == UploadStatus.PENDING and upload.expires_at <= now():
        Sweeper(services).expire_uploads()
        upload = services.uploads.get(owner, upload_id)
    if upload.status != UploadStatus.PENDING:
        raise InvalidRequest(
            f"Upload {upload_id} is {upload.status}; create a new upload",
            param="upload_id",
            code="invalid_upload_status",
        )
    return upload


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
