"""A job's objects in the store (``selftune.storage``), as the worker keeps them while it trains.

Keys mirror the job folder (``JobDir``) under ``SELFTUNE_HOME``: ``jobs/ID/checkpoints/step-N``,
``jobs/ID/state.pt``, ``jobs/ID/adapter``. With a remote store, each checkpoint's adapter and the
resume state go there as the recipe reports them (so any worker continues the job, and any server
serves the checkpoint), the final adapter when the job ends, the state at a pause; a worker that
continues a job fetches the state and the checkpoints first. With the local folder as the store,
every method but ``key`` does nothing: the job folder is where the objects already lie.
"""

from __future__ import annotations

from pathlib import Path

from selftune.storage import Storage
from selftune.store import Store
from selftune.train.protocol import Checkpoint, JobDir


class JobObjects:
    def __init__(self, storage: Storage, store: Store, home: Path) -> None:
        self.storage, self.store, self.home = storage, store, home

    def key(self, path: str | Path) -> str:
        """The store's key of a file or folder in this machine's home."""
        return Path(path).relative_to(self.home).as_posix()

    def put(self, path: Path) -> None:
        """Store an adapter or the resume state (with a remote store, when it exists)."""
        if self.storage.remote and path.exists():
            self.storage.put(self.key(path), path)

    def delete(self, path: Path) -> None:
        """Remove an object (and what is under it) from a remote store."""
        if self.storage.remote:
            self.storage.delete(self.key(path))

    def checkpoint(self, job_id: str, e: Checkpoint, files: JobDir) -> tuple[str, list[str]]:
        """Store a checkpoint's adapter and the state saved with it, and drop from the store the
        checkpoints the recipe pruned; the checkpoint's key and the keys of those kept."""
        kept = [self.key(p) for p in e.kept or [e.path]]
        if self.storage.remote:
            self.put(Path(e.path))
            self.put(files.state)
            before, _ = self.store.list_checkpoints(job_id, limit=1000)
            for gone in {c.adapter_path for c in before} - set(kept):
                self.storage.delete(gone)
        return self.key(e.path), kept

    def has_state(self, files: JobDir) -> bool:
        """Whether the job can continue: its resume state is here or in the store."""
        return files.state.is_file() or (self.storage.remote and self.storage.exists(self.key(files.state)))

    def fetch(self, job_id: str, files: JobDir) -> int | None:
        """Bring the latest state saved anywhere, and the checkpoints, into this job folder; the step
        of the last checkpoint, or None when the store has no state (or is the local folder)."""
        if not self.storage.remote or not self.storage.get(self.key(files.state), files.state):
            return None
        checkpoints, _ = self.store.list_checkpoints(job_id, limit=1000)
        for c in checkpoints:
            self.storage.get(c.adapter_path, self.home / c.adapter_path)
        return max((c.step_number for c in checkpoints), default=0)
