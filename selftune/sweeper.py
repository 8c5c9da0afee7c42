"""The sweeper: what has outlived its time is deleted, so the disk holds only what is live.

A server runs ``Sweeper.sweep`` every ``SELFTUNE_SWEEP_SECONDS`` (off the event loop). Each step is
safe to run on several servers at once (the database decides, with a compare-and-set, who deletes):

- **uploads** not completed within their hour are ``expired``, and their parts deleted;
- **files** past their ``expires_after`` (already invisible to the API) lose their bytes;
- **exports** finished longer ago than ``SELFTUNE_EXPORT_RETENTION_SECONDS`` are deleted;
- **batches** that ended lose their progress folder (its lines are in their output and error files);
- **bytes without a file**: what a crash between publishing a file's bytes and writing its row
  left under ``files/`` (once nobody has written to it for the temporary window);
- **temporary files** that nobody has written to for ``SELFTUNE_TEMP_RETENTION_SECONDS`` (what a
  crash or a dropped connection left: an upload's ``.part``, a ``.NAME.*.tmp`` of an atomic write,
  the parts of an upload that no longer waits for them) are removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from selftune.atomic import remove_tree
from selftune.errors import InvalidStatus, NotFound
from selftune.files import upload_file_id
from selftune.ids import now
from selftune.services import Core
from selftune.statuses import BATCHES, EXPORTS, UploadAction, UploadStatus

log = logging.getLogger("selftune.sweeper")


class Sweeper:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.settings = core.settings
        self.home = core.settings.home

    def sweep(self) -> dict[str, int]:
        """One round; how many of each were deleted."""
        done = {
            "uploads": self.expire_uploads(),
            "files": self.expired_files(),
            "exports": self.old_exports(),
            "batches": self.finished_batches(),
            "unregistered": self.unregistered_bytes(),
            "temporary": self.stray_temporaries(),
        }
        if any(done.values()):
            log.info("swept %s", ", ".join(f"{n} {what}" for what, n in done.items() if n))
        return done

    def expire_uploads(self) -> int:
        """Pending uploads past their time become ``expired`` and lose their parts, and the file a
        completion registered before a crash stopped it (the client was never answered)."""
        n = 0
        for held in self.core.uploads.in_status(UploadStatus.PENDING):
            if held.obj.expires_at > now():
                continue
            try:
                self.core.uploads.apply(held.obj, UploadAction.EXPIRE)
            except InvalidStatus:  # completed or cancelled in the meantime
                continue
            remove_tree(self.core.blobs.parts(held.obj.id), self.core.blobs.root)
            half_done = upload_file_id(held.obj.id)
            if self.core.store.registered_file(half_done) is not None:
                self.core.store.delete_file(held.owner, half_done)
                self.core.blobs.delete(half_done)
            n += 1
        return n

    def expired_files(self) -> int:
        ids = self.core.store.expire_files()
        for file_id in ids:
            self.core.blobs.delete(file_id)
        return len(ids)

    def old_exports(self) -> int:
        keep = self.settings.export_retention_seconds
        if not keep:
            return 0
        from selftune.export.service import ExportRecord

        root = self.home / "exports"
        n = 0
        for status in EXPORTS.terminal:
            for rec in self.core.store.objects.in_status("export", status):
                if ExportRecord.model_validate(rec.data).created_at + keep > now():
                    continue
                try:
                    self.core.store.objects.delete("export", rec.owner, rec.id, "export")
                except NotFound:  # another server deleted it first
                    continue
                remove_tree(root / rec.id, root)
                n += 1
        return n

    def finished_batches(self) -> int:
        root = self.home / "batches"
        if not root.is_dir():
            return 0
        open_ids = {rec.id for rec in self.core.store.objects.in_status("batch", *BATCHES.unfinished)}
        n = 0
        for folder in root.iterdir():
            if folder.name not in open_ids and _idle(folder, 60):
                remove_tree(folder, root)
                n += 1
        return n

    def unregistered_bytes(self) -> int:
        cutoff = self.settings.temp_retention_seconds
        root = self.core.blobs.root
        idle = {p.name: p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and _idle(p, cutoff)}
        orphans = self.core.store.unregistered(idle)
        for file_id in orphans:
            idle[file_id].unlink(missing_ok=True)
        return len(orphans)

    def stray_temporaries(self) -> int:
        cutoff = self.settings.temp_retention_seconds
        blobs = self.core.blobs
        pending = {held.obj.id for held in self.core.uploads.in_status(UploadStatus.PENDING)}
        n = 0
        for path in _temporaries(self.home, blobs.tmp, blobs.root / ".uploads", pending):
            if _idle(path, cutoff):
                remove_tree(path, self.home)
                n += 1
        return n


def _temporaries(home: Path, tmp: Path, parts: Path, pending: set[str]) -> Iterator[Path]:
    """Every temporary thing under ``home`` that could be left behind: a streamed upload's file, an
    atomic write's ``.NAME.*.tmp`` (in the folders selftune writes into, two levels deep), and the
    parts of an upload that is no longer pending."""
    if tmp.is_dir():
        yield from tmp.iterdir()
    if parts.is_dir():
        yield from (p for p in parts.iterdir() if p.name not in pending)
    for folder in ("models", "jobs", "exports", "batches", "files"):
        top = home / folder
        if not top.is_dir():
            continue
        for pattern in (".*.tmp", "*/.*.tmp"):
            yield from top.glob(pattern)


def _idle(path: Path, seconds: float) -> bool:
    """Nothing has been written to ``path`` (or, for a folder, into it) for ``seconds``."""
    try:
        latest = path.stat().st_mtime
        if path.is_dir():
            latest = max([latest, *(p.stat().st_mtime for p in path.iterdir())])
    except OSError:  # gone meanwhile
        return False
    return time.time() - latest > seconds
