"""File bytes (metadata lives in ``store``), and their SHA-256.

A file is streamed into a temporary file under ``SELFTUNE_HOME/files/.tmp`` (never held in memory),
and put in place under its id only once it is complete, so a crash or a client that disconnects
mid-upload never leaves a half-written file under a real id. In place means ``files/ID`` (renamed,
``selftune.atomic.publish``) with the local folder as the store, and the object ``files/ID`` with a
remote store (``selftune.storage``): uploaded there first, then kept in this machine's cache, from
which any other machine fetches it on first use.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from selftune.atomic import publish
from selftune.errors import InvalidRequest, SelftuneError

if TYPE_CHECKING:
    from selftune.cache import Cache

CHUNK = 1024 * 1024


def too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"File is larger than this server's upload limit of {limit:,} bytes. "
        "Split it, or raise SELFTUNE_MAX_UPLOAD_BYTES.",
        param="file",
        code="file_too_large",
    )


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (never parsed)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Blobs:
    def __init__(self, root: Path, cache: Cache | None = None) -> None:
        self.root = root
        self.tmp = root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        """With a remote store: where this machine keeps the files it made or fetched."""

    @staticmethod
    def key(file_id: str) -> str:
        """A file's key in the store."""
        return f"files/{file_id}"

    def path(self, file_id: str) -> Path:
        """The file's bytes on this machine (fetched from the store first when they are elsewhere)."""
        if self.cache is None or (self.root / file_id).is_file():
            return self.root / file_id
        return self.cache.fetch(self.key(file_id)) or self.cache.entry(self.key(file_id))

    def new_temp(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        os.close(fd)
        return Path(name)

    def copy_to_temp(
        self, src: BinaryIO, limit: int | None, refusal: SelftuneError | None = None
    ) -> tuple[Path, int, str]:
        """Stream ``src`` into a new temporary file, chunk by chunk, never more than ``limit`` bytes
        (beyond them, ``refusal`` is raised: by default the upload limit's error). Returns the file,
        its size and the SHA-256 of its bytes."""
        tmp = self.new_temp()
        size = 0
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise refusal or too_large(limit)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size, digest.hexdigest()

    def checksum(self, file_id: str) -> str:
        """SHA-256 of a stored file's bytes."""
        return sha256_file(self.path(file_id))

    def commit(self, tmp: Path, file_id: str) -> Path:
        """Publish a finished temporary file under its id (fsynced, then renamed, then the folder fsynced)."""
        if self.cache is not None:
            self.cache.storage.put(self.key(file_id), tmp)
            return self.cache.add(self.key(file_id), tmp)
        dest = self.root / file_id
        publish(tmp, dest)
        return dest

    def delete(self, file_id: str) -> None:
        (self.root / file_id).unlink(missing_ok=True)
        if self.cache is not None:
            self.cache.storage.delete(self.key(file_id))
            self.cache.drop(self.key(file_id))

    def parts(self, upload_id: str) -> Path:
        """The folder that holds a multipart upload's parts until it is completed (``/v1/uploads``)."""
        return self.root / ".uploads" / upload_id
