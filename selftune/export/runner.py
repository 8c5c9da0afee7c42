"""A server's export runner: claims ``running`` exports and builds each in an export process.

Like the batch runner, it claims work with a lease on the database's clock (``selftune.claims``),
so among N servers on one database exactly one builds an export, and if that server dies (its
export process dies with it) another builds it again once the lease lapses. At most
``SELFTUNE_EXPORT_CONCURRENCY`` exports build at once on one server, each in its own process
(``export.process``: its folder is the contract), at the training priority
(``SELFTUNE_TRAIN_PRIORITY``) so serving goes first, and in a process of its own so the memory it
took is returned when it ends. Progress is copied from the process's folder into the record; the
end is its last move (``succeed`` with the manifest, or ``fail`` with the error).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from dataclasses import dataclass

from selftune.atomic import remove_tree
from selftune.children import lower_priority
from selftune.claims import LeaseKeeper, holder_id
from selftune.convert.quantize import DEFAULT_QUANTIZE
from selftune.errors import NotFound, SelftuneError
from selftune.export.process import LOG, ExportRequest, read_progress, read_result
from selftune.export.service import ExportRecord, Exports
from selftune.export.spec import ExportSpec
from selftune.faults import crash_point
from selftune.schemas.exports import ExportError, ExportProgress
from selftune.statuses import EXPORTS, ExportAction

log = logging.getLogger("selftune.exports")

POLL_S = 0.5


@dataclass
class _Building:
    record: ExportRecord
    proc: subprocess.Popen[bytes]


class ExportRunner:
    def __init__(self, exports: Exports) -> None:
        self.exports = exports
        self.records = exports.records
        self.settings = exports.settings
        self.claims = exports.store.claims
        self.holder = holder_id()
        self.leases = LeaseKeeper(self.claims, "objects", self.holder, self.settings.lease_seconds)
        self.building: dict[str, _Building] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="selftune-exports", daemon=True)

    def start(self) -> None:
        self.leases.start()
        self._thread.start()

    def stop(self) -> None:
        """Exports still building are stopped and given up: another server (or this one, restarted)
        builds them again."""
        self._stop.set()
        self._thread.join(timeout=10)
        for export_id, b in list(self.building.items()):
            _kill(b.proc)
            self.claims.release("objects", self.holder, export_id)
        self.leases.stop()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                for b in list(self.building.values()):
                    self._follow(b)
                while len(self.building) < self.settings.export_concurrency and self._claim_one():
                    pass
            except Exception:  # a bug or a database blip must not stop every later export
                log.exception("export runner error")

    def _claim_one(self) -> bool:
        self.claims.release_dead("export", EXPORTS.claimed, self.holder)
        row = self.claims.claim_object("export", EXPORTS.claimed, self.holder, self.settings.lease_seconds)
        if row is None:
            return False
        self.leases.hold(row.id)
        record = ExportRecord.model_validate(row.data)
        folder = self.exports.root / record.id
        remove_tree(folder, self.exports.root)  # what a server that died left half-built
        folder.mkdir(parents=True)
        try:
            source = self.exports.source_here(row.owner, record)
        except SelftuneError as e:  # its model was deleted meanwhile
            self.leases.drop(record.id)
            error = ExportError(code=e.code or "export_failed", message=e.message)
            self.records.apply(record, ExportAction.FAIL, error=error, progress=None)
            return True
        spec = ExportSpec(record.format, record.quantize or DEFAULT_QUANTIZE, record.lora)  # type: ignore[arg-type]
        ExportRequest(source, spec, record.folder).write(folder)
        with (folder / LOG).open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "selftune.export.process", str(folder)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        lower_priority(proc.pid, self.settings.train_priority)
        self.building[record.id] = _Building(record, proc)
        log.info("export %s claimed by %s (pid %d)", record.id, self.holder, proc.pid)
        return True

    def _follow(self, b: _Building) -> None:
        export_id = b.record.id
        exited = b.proc.poll() is not None
        try:
            current = self.records.get(None, export_id)
        except NotFound:  # deleted meanwhile: stop building it, and free its folder
            self._forget(b, kill=True)
            remove_tree(self.exports.root / export_id, self.exports.root)
            return
        if self.leases.lost(export_id) or current.status not in EXPORTS.claimed:
            self._forget(b, kill=True)  # another server builds it now
            return
        folder = self.exports.root / export_id
        progress = read_progress(folder)
        if not exited:
            if progress is not None and current.progress != ExportProgress.model_validate(progress):
                self.records.save(current.model_copy(update={"progress": ExportProgress.model_validate(progress)}))
            return
        self._forget(b, kill=False)
        result = read_result(folder) or {}
        if b.proc.returncode == 0 and "manifest" in result:
            crash_point("export.built")
            self.exports.store_built(export_id)
            self.records.apply(current, ExportAction.SUCCEED, manifest=result["manifest"], progress=None)
            return
        error = result.get("error") or {
            "code": "export_failed",
            "message": f"the export process exited with status {b.proc.returncode}; see {folder / LOG}",
        }
        self.records.apply(current, ExportAction.FAIL, error=ExportError.model_validate(error), progress=None)

    def _forget(self, b: _Building, *, kill: bool) -> None:
        if kill:
            _kill(b.proc)
        self.building.pop(b.record.id, None)
        self.leases.drop(b.record.id)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
