"""This machine's copies of objects in a remote store, under ``SELFTUNE_HOME/cache``, bounded in size.

With ``SELFTUNE_STORAGE_URL`` set, a server asked for a fine-tuned model it did not train, a file
uploaded to another server, or an export built elsewhere fetches the object once (``fetch``) and
keeps it here. Each object is one entry (a file or a folder, named by its key), and every use
touches it, so the least recently used go first once the entries hold more than
``SELFTUNE_CACHE_BYTES``. An entry used in the last ``IN_USE_SECONDS`` is never evicted (a training
process may still read it, an engine may be loading it): the cache can pass its bound for that
long. With the local folder as the store nothing is fetched and the cache stays empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from selftune.atomic import locked, publish, remove_tree
from selftune.storage import Storage

log = logging.getLogger("selftune.cache")

IN_USE_SECONDS = 600.0


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Cache:
    def __init__(self, root: Path, storage: Storage, limit_bytes: int, in_use_seconds: float = IN_USE_SECONDS) -> None:
        self.root = root
        self.storage = storage
        self.limit = limit_bytes
        self.in_use_seconds = in_use_seconds
        self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        """Where ``key``'s copy lies (or will): one name per key, ``/`` escaped."""
        return self.root / quote(key, safe="")

    def fetch(self, key: str) -> Path | None:
        """The local copy of ``key``, downloaded (and checked) first when this machine has none; None
        when the store has nothing under it."""
        path = self.entry(key)
        if not path.exists():
            with locked(self.root / f".{path.name}.lock"):  # two threads or processes fetch it once
                if not path.exists():
                    started = time.perf_counter()
                    if not self.storage.get(key, path):
                        return None
                    log.info("fetched %s from the store in %.2f s", key, time.perf_counter() - started)
            self.evict(keep=path)
        self.touch(path)
        return path

    def add(self, key: str, made: Path) -> Path:
        """Put a file this machine made (and stored) into the cache as ``key``'s copy, by renaming it."""
        path = self.entry(key)
        publish(made, path)
        self.evict(keep=path)
        return path

    def drop(self, key: str) -> None:
        remove_tree(self.entry(key), self.root)

    @staticmethod
    def touch(path: Path) -> None:
        with contextlib.suppress(OSError):  # evicted meanwhile: the caller's next fetch brings it back
            os.utime(path)

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries until the rest fit in the bound."""
        entries = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        sizes = {p: _size(p) for p in entries}
        total = sum(sizes.values())
        if total <= self.limit:
            return
        recent = time.time() - self.in_use_seconds
        for path in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.limit:
                break
            if path == keep or path.stat().st_mtime > recent:
                continue
            log.info("cache over %d bytes: dropping %s (%d bytes)", self.limit, path.name, sizes[path])
            remove_tree(path, self.root)
            total -= sizes[path]


def local_copy(home: Path, cache: Cache | None, key: str) -> Path:
    """Where the object ``key`` lies on this machine: in place under ``home`` (this machine made it, or
    the store is the local folder), or else fetched into the cache. A key the store does not hold
    either gives the path under ``home`` that is not there, for the caller's usual "missing" error."""
    here = home / key
    if cache is None or here.exists():
        return here
    return cache.fetch(key) or here
