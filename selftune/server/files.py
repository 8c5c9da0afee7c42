"""``/v1/files``: upload (multipart), list, retrieve, content and delete.

Uploads never sit in memory: the multipart parser spools the part to disk, and
``selftune.files.store_file`` streams it into a temporary file, validates it there, and only then
renames it into place and registers it. ``purpose=fine-tune`` files are sniffed and validated by
content (the legacy SDK names every upload ``file``), and a bad file is answered with every problem
and its line number.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from selftune.errors import InvalidRequest
from selftune.files import store_file
from selftune.schemas.files import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route
from selftune.store import FileRecord

router = APIRouter(tags=["files"], route_class=Route)


def to_wire(rec: FileRecord) -> FileObject:
    return FileObject(
        id=rec.id,
        bytes=rec.size_bytes,
        created_at=rec.created_at,
        expires_at=rec.expires_at,
        filename=rec.filename,
        purpose=rec.purpose,
        status=rec.status,
        status_details=rec.status_details,
    )


@router.post("/files")
async def create_file(request: Request, services: ServicesDep, owner: OwnerDep) -> FileObject:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Upload files as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    async with request.form(max_files=1, max_fields=16) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        expires = _expires_after(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing the 'file' part of the upload.", param="file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"Invalid purpose {purpose!r}; expected one of: {', '.join(UPLOAD_PURPOSES)}.",
                param="purpose",
            )
        filename = upload.filename or "file"
        rec = await run_in_threadpool(
            lambda: store_file(
                services.store,
                services.blobs,
                owner,
                upload.file,
                filename,
                purpose,
                limit=services.settings.max_upload_bytes,
                expires_after=expires,
            )
        )
        return to_wire(rec)


def _expires_after(anchor: Any, seconds: Any) -> int | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if not 3600 <= value <= 2_592_000:
        raise InvalidRequest(
            "expires_after[seconds] must be between 3600 (1 hour) and 2592000 (30 days).",
            param="expires_after.seconds",
        )
    return value


@router.get("/files")
def list_files(
    services: ServicesDep,
    owner: OwnerDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    recs, has_more = services.store.list_files(owner, purpose=purpose, limit=limit, after=after, order=order)
    data = [to_wire(r) for r in recs]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, services: ServicesDep, owner: OwnerDep) -> FileObject:
    return to_wire(services.store.get_file(owner, file_id))


@router.get("/files/{file_id}/content")
def file_content(file_id: str, services: ServicesDep, owner: OwnerDep) -> FileResponse:
    rec = services.store.get_file(owner, file_id)
    if rec.purpose == "fine-tune" and not services.settings.fine_tune_downloads:
        # OpenAI's own answer, word for word: clients (and `selftune migrate`) recognise it.
        raise InvalidRequest(f"Not allowed to download files of purpose: {rec.purpose}", param="file_id")
    return FileResponse(services.blobs.path(rec.id), media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(file_id: str, services: ServicesDep, owner: OwnerDep) -> FileDeleted:
    services.store.delete_file(owner, file_id)
    services.blobs.delete(file_id)
    return FileDeleted(id=file_id)
