"""Exports on a server: what the API creates, lists, downloads and deletes (``/v1/exports``).

An export is an object of kind ``export`` in the database (``ExportRecord``, moved along
``statuses.EXPORTS``), and a folder ``SELFTUNE_HOME/exports/ID/`` that its export process builds
(``export.process``). Creating one resolves the model for its owner (``source``: a 404 for someone
else's model), checks the request and the disk's room, and records it ``running``; a server's
``ExportRunner`` (``export.runner``) claims it and builds it. Asking again for the same model,
format and quantisation returns the export already built or building. Exports belong to their
owner; to everyone else they do not exist.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from selftune.atomic import remove_tree
from selftune.catalog import Catalog
from selftune.config import Settings
from selftune.errors import InvalidRequest, NotFound, RateLimited
from selftune.export.spec import ExportSpec, Source, check_room, estimate_bytes, safe_name
from selftune.ids import now, random_id
from selftune.inference.loading import check_adapter
from selftune.lifecycle import Objects
from selftune.schemas.common import Response
from selftune.schemas.exports import ExportError, ExportProgress
from selftune.statuses import EXPORTS, ExportStatus
from selftune.store import Store

log = logging.getLogger("selftune.exports")

RETRY_AFTER_S = 30.0
"""What a 429 for an export suggests: an export takes tens of seconds at the least."""


class ExportRecord(Response):
    """An export as stored: the wire object's fields, the manifest its process wrote, and its source."""

    id: str
    object: str = "export"
    created_at: int
    model: str
    format: str
    quantize: str | None
    lora: bool
    folder: str
    status: ExportStatus
    progress: ExportProgress | None = None
    estimated_bytes: int
    manifest: dict[str, Any] | None = None
    error: ExportError | None = None
    source: dict[str, Any]


def source(catalog: Catalog, store: Store, model: str, owner: str) -> Source:
    """What ``model`` (as ``owner`` names it) is built from; a 404 for someone else's model."""
    resolved = catalog.resolve(model, owner)
    if resolved.adapter is not None:
        check_adapter(resolved)
    folder = catalog.materialize(resolved.base)
    training = None
    rec = store.find_model(owner, resolved.id) if resolved.adapter is not None else None
    if rec is not None and rec.job_id is not None:
        job = store.get_job(owner, rec.job_id)
        training = {
            "job": job.id,
            "method": job.method_with_hyperparameters(),
            "hyperparameters": job.hyperparameters.common(),
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "seed": job.seed,
            "suffix": job.suffix,
        }
    context = catalog.context_length(resolved.base) or 2048
    gguf = catalog.gguf(resolved.base)
    return Source(resolved.id, resolved.base.name, folder, resolved.adapter, context, gguf, training)


def not_found(export_id: str) -> NotFound:
    return NotFound(f"No export with id {export_id!r} exists.", param="export_id", code="export_not_found")


class Exports:
    def __init__(self, settings: Settings, store: Store, catalog: Catalog) -> None:
        self.settings, self.store, self.catalog = settings, store, catalog
        self.root = settings.home / "exports"
        self.root.mkdir(parents=True, exist_ok=True)
        self.records: Objects[ExportRecord] = Objects(store.objects, "export", ExportRecord, EXPORTS, "export")
        self._adopt_legacy()

    def create(self, owner: str, model: str, format: str, quantize: str | None, lora: bool) -> ExportRecord:
        src = source(self.catalog, self.store, model, owner)
        spec = ExportSpec.parse(format, quantize, lora, src.adapter is not None)
        mine = self.list(owner)
        for record in mine:
            same = (record.model, record.format, record.lora) == (src.model, spec.format, spec.lora)
            if same and record.quantize in (None, spec.quantize) and record.status != ExportStatus.FAILED:
                return record
        self._admit(sum(r.status == ExportStatus.RUNNING for r in mine))
        size, need = estimate_bytes(src, spec)
        check_room(self.root, need)
        record = ExportRecord(
            id=random_id("export-"),
            created_at=now(),
            model=src.model,
            format=spec.format,
            quantize=spec.quantize if spec.format in ("gguf", "ollama") else None,
            lora=spec.lora,
            folder=f"{safe_name(src.model)}-{spec.format}",
            status=ExportStatus.RUNNING,  # a server's runner claims it and builds it
            estimated_bytes=size,
            source=src.to_dict(),
        )
        return self.records.insert(owner, record)

    def _admit(self, mine: int) -> None:
        """Each export loads a model in float32 in a process of its own: a bounded number at once."""
        if mine >= self.settings.max_exports_per_owner:
            raise RateLimited(
                f"{mine} export(s) of this key are being built (SELFTUNE_MAX_EXPORTS_PER_OWNER is "
                f"{self.settings.max_exports_per_owner}); retry once one has finished",
                retry_after=RETRY_AFTER_S,
            )
        building = len(self.store.objects.in_status("export", ExportStatus.RUNNING))
        if building >= self.settings.max_exports_building:
            raise RateLimited(
                f"{building} exports are being built on this server (SELFTUNE_MAX_EXPORTS_BUILDING); retry shortly",
                retry_after=RETRY_AFTER_S,
            )

    def get(self, owner: str, export_id: str) -> ExportRecord:
        try:
            return self.records.get(owner, export_id)
        except NotFound:
            raise not_found(export_id) from None

    def list(self, owner: str) -> list[ExportRecord]:
        records, _ = self.records.page(owner, limit=10_000, after=None)
        return records

    def content(self, owner: str, export_id: str) -> tuple[ExportRecord, Path]:
        record = self.get(owner, export_id)
        if record.status != ExportStatus.SUCCEEDED:
            raise InvalidRequest(
                f"export {export_id} is {record.status}; download it once it has succeeded",
                param="export_id",
                code="export_not_ready",
            )
        here = self.root / export_id
        if not here.is_dir() and self.catalog.cache is not None:  # built by another server
            here = self.catalog.cache.fetch(self.key(export_id)) or here
        return record, here / record.folder

    def delete(self, owner: str, export_id: str) -> None:
        """Gone at once for the API; the runner building it (on any server) stops it and frees its folder."""
        self.get(owner, export_id)
        self.records.delete(owner, export_id)
        remove_tree(self.root / export_id, self.root)
        if self.catalog.cache is not None:
            self.catalog.cache.storage.delete(self.key(export_id))
            self.catalog.cache.drop(self.key(export_id))

    @staticmethod
    def key(export_id: str) -> str:
        return f"exports/{export_id}"

    def source_here(self, owner: str, record: ExportRecord) -> Source:
        """What the export is built from, on this server: with a remote store the server that took the
        request may be another machine, so its paths are resolved again here (fetching the adapter)."""
        if self.catalog.cache is None:
            return Source.from_dict(record.source)
        return source(self.catalog, self.store, record.model, owner)

    def store_built(self, export_id: str) -> None:
        """With a remote store, a finished export goes there, so any server can hand it out."""
        if self.catalog.cache is not None:
            self.catalog.cache.storage.put(self.key(export_id), self.root / export_id)

    def close(self) -> None:
        """Nothing of its own to stop: the runner owns the export processes."""

    def _adopt_legacy(self) -> None:
        """Exports made before they were kept in the database (``exports/ID/export.json``) are recorded
        once, so an upgraded server still lists and serves them; one that was running is failed."""
        for path in sorted(self.root.glob("*/export.json")):
            try:
                old: dict[str, Any] = json.loads(path.read_text())
                try:
                    self.records.get(None, old["id"])
                    continue  # adopted already
                except NotFound:
                    pass
                if old.get("status") == ExportStatus.RUNNING:
                    old["status"] = ExportStatus.FAILED
                    old["error"] = {"code": "export_interrupted", "message": "the server was upgraded while it ran"}
                owner = old.pop("owner")
                self.records.insert(owner, ExportRecord.model_validate({**old, "progress": None}))
            except (KeyError, ValueError) as e:  # not one of ours, or damaged: leave it alone
                log.warning("could not adopt the export record %s: %s", path, e)
