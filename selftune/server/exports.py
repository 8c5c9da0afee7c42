"""``/v1/exports`` (a selftune extension): export a model, follow the export, download it as a tar archive.

``POST /v1/exports`` records the export (``selftune.export.service``), which a server's export
runner builds in its own process, and answers at once; ``GET /v1/exports/{id}`` shows its
progress, then its files, checksums and verification;
``GET /v1/exports/{id}/content`` streams the folder as an uncompressed tar (weights do not
compress), whose exact length is known beforehand and sent as ``Content-Length``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from selftune.export.service import ExportRecord
from selftune.schemas.exports import Export, ExportCreate, ExportDeleted, ExportFile, ExportList
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route

router = APIRouter(tags=["exports"], route_class=Route)
BLOCK = tarfile.BLOCKSIZE


def to_wire(record: ExportRecord) -> Export:
    manifest = record.manifest or {}
    files = [ExportFile(name=k, **v) for k, v in (manifest.get("files") or {}).items()]
    fields = record.model_dump(include=set(Export.model_fields) - {"files", "run", "verification", "bytes"})
    return Export(
        **fields,
        bytes=sum(f.bytes for f in files) if files else None,
        files=files,
        verification=manifest.get("verification"),
        run=manifest.get("run") or {},
    )


@router.post("/exports")
def create_export(body: ExportCreate, services: ServicesDep, owner: OwnerDep) -> Export:
    return to_wire(services.exports.create(owner, body.model, body.format, body.quantize, body.lora))


@router.get("/exports")
def list_exports(services: ServicesDep, owner: OwnerDep) -> ExportList:
    return ExportList(data=[to_wire(r) for r in services.exports.list(owner)])


@router.get("/exports/{export_id}")
def retrieve_export(export_id: str, services: ServicesDep, owner: OwnerDep) -> Export:
    return to_wire(services.exports.get(owner, export_id))


@router.delete("/exports/{export_id}")
def delete_export(export_id: str, services: ServicesDep, owner: OwnerDep) -> ExportDeleted:
    services.exports.delete(owner, export_id)
    return ExportDeleted(id=export_id)


@router.get("/exports/{export_id}/content")
def export_content(export_id: str, services: ServicesDep, owner: OwnerDep) -> StreamingResponse:
    record, folder = services.exports.content(owner, export_id)
    members = [(p, f"{record.folder}/{p.relative_to(folder)}") for p in sorted(folder.rglob("*")) if p.is_file()]
    length = sum(BLOCK + -(-p.stat().st_size // BLOCK) * BLOCK for p, _ in members) + 2 * BLOCK
    return StreamingResponse(
        _tar(members),
        media_type="application/x-tar",
        headers={
            "Content-Length": str(length),
            "Content-Disposition": f'attachment; filename="{record.folder}.tar"',
        },
    )


def _tar(members: list[tuple[Path, str]]) -> Iterator[bytes]:
    """A ustar stream: each file's header (``tarfile``'s own), its bytes in 1 MiB pieces, padding."""
    for path, name in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = path.stat().st_size, int(path.stat().st_mtime), 0o644
        yield info.tobuf(tarfile.USTAR_FORMAT)
        with path.open("rb") as f:
            yield from iter(lambda: f.read(2**20), b"")
        if info.size % BLOCK:
            yield b"\0" * (BLOCK - info.size % BLOCK)
    yield b"\0" * (2 * BLOCK)
