"""Exports on a server: each one a folder under ``SELFTUNE_HOME/exports``, built by its own process.

An export is derived data, so it lives on disk, not in the database: ``exports/ID/export.json``
holds its request, owner and state, and ``exports/ID/NAME/`` the finished files. The server
writes the record once at creation; from then on only the export process (``python -m
selftune.export.run``) rewrites it, atomically, as it advances (``status``, ``progress``, then the
manifest or the error). Export processes run at the training priority (``SELFTUNE_TRAIN_PRIORITY``),
so serving goes first, and in their own process so their memory is returned when they end.

A record still ``running`` whose process is gone (the server restarted, the process was killed)
reads as ``failed``. Asking again for the same model, format and quantisation returns the export
already built or building. Exports belong to their owner; to everyone else they do not exist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from selftune.catalog import Catalog
from selftune.config import Settings
from selftune.errors import InvalidRequest, NotFound
from selftune.export.build import ExportSpec, Source, check_room, estimate_bytes, safe_name
from selftune.ids import random_id
from selftune.inference.loading import check_adapter
from selftune.store import Store

RECORD = "export.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Temporary file, then rename: a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


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
            "method": job.method,
            "hyperparameters": job.hyperparameters,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "seed": job.seed,
            "suffix": job.suffix,
        }
    context = catalog.context_length(resolved.base) or 2048
    gguf = catalog.gguf(resolved.base)
    return Source(resolved.id, resolved.base.name, folder, resolved.adapter, context, gguf, training)


class Exports:
    def __init__(self, settings: Settings, catalog: Catalog, store: Store) -> None:
        self.settings, self.catalog, self.store = settings, catalog, store
        self.root = settings.home / "exports"
        self.root.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def create(self, owner: str, model: str, format: str, quantize: str | None, lora: bool) -> dict[str, Any]:
        src = source(self.catalog, self.store, model, owner)
        spec = ExportSpec.parse(format, quantize, lora, src.adapter is not None)
        with self._lock:
            for record in self.list(owner):
                same = (record["model"], record["format"], record["lora"]) == (src.model, spec.format, spec.lora)
                if same and record["quantize"] in (None, spec.quantize) and record["status"] != "failed":
                    return record
            size, need = estimate_bytes(src, spec)
            check_room(self.root, need)
            export_id = random_id("export-")
            folder = self.root / export_id
            folder.mkdir()
            record = {
                "id": export_id,
                "object": "export",
                "owner": owner,
                "created_at": int(time.time()),
                "model": src.model,
                "format": spec.format,
                "quantize": spec.quantize if spec.format in ("gguf", "ollama") else None,
                "lora": spec.lora,
                "folder": f"{safe_name(src.model)}-{spec.format}",
                "status": "running",
                "progress": None,
                "estimated_bytes": size,
                "manifest": None,
                "error": None,
                "source": src.to_dict(),
            }
            write_record(folder / RECORD, record)
            from selftune.worker import lower_priority

            with (folder / "export.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "selftune.export.run", str(folder / RECORD)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            lower_priority(proc.pid, self.settings.train_priority)
            self._procs[export_id] = proc
            return record

    def get(self, owner: str, export_id: str) -> dict[str, Any]:
        path = self.root / export_id / RECORD
        if "/" in export_id or export_id.startswith(".") or not path.is_file():
            raise _not_found(export_id)
        record: dict[str, Any] = json.loads(path.read_text())
        if record.get("owner") != owner:
            raise _not_found(export_id)
        if record["status"] == "running" and not self._alive(export_id):
            record = json.loads(path.read_text())  # it may have finished between the two reads
            if record["status"] == "running":
                record["status"] = "failed"
                record["error"] = {
                    "code": "export_interrupted",
                    "message": "the export process ended before finishing (was the server restarted?); create it again",
                }
        return record

    def list(self, owner: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                out.append(self.get(owner, path.parent.name))
            except (NotFound, json.JSONDecodeError):
                continue
        return sorted(out, key=lambda r: -int(r["created_at"]))

    def content(self, owner: str, export_id: str) -> tuple[dict[str, Any], Path]:
        record = self.get(owner, export_id)
        if record["status"] != "succeeded":
            raise InvalidRequest(
                f"export {export_id} is {record['status']}; download it once it has succeeded",
                param="export_id",
                code="export_not_ready",
            )
        return record, self.root / export_id / record["folder"]

    def delete(self, owner: str, export_id: str) -> None:
        self.get(owner, export_id)
        with self._lock:
            proc = self._procs.pop(export_id, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.root / export_id, ignore_errors=True)

    def close(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _alive(self, export_id: str) -> bool:
        proc = self._procs.get(export_id)
        return proc is not None and proc.poll() is None


def _not_found(export_id: str) -> NotFound:
    return NotFound(f"No export with id {export_id!r} exists.", param="export_id", code="export_not_found")
