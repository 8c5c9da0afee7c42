"""Where the bytes of every object live: the local folder, or an S3-compatible store shared by machines.

One interface, ``Storage``, addressed by *keys* (``files/ID``, ``jobs/ID/adapter``,
``jobs/ID/checkpoints/step-N``, ``jobs/ID/state.pt``, ``exports/ID/...``, ``bases/SHA256/NAME``):

- ``LocalStorage`` (the default, ``SELFTUNE_STORAGE_URL`` unset or ``file:``): the store *is*
  ``SELFTUNE_HOME``. A key names the path under it where the object already lies, so nothing is
  copied and a one-machine install behaves exactly as before.
- ``S3Storage`` (``SELFTUNE_STORAGE_URL=s3://bucket/prefix``): objects live in the bucket, through
  boto3, with the endpoint and credentials of the standard ``AWS_*`` variables. Uploads and
  downloads stream from and to disk (boto3's transfer manager: multipart above 8 MB, never a whole
  object in memory). Every object carries the SHA-256 of its bytes in its metadata, and a download
  whose bytes do not match is refused and removed. What a machine downloads goes to its bounded
  cache (``cache``), least recently used out.

A folder (an adapter, a checkpoint, an export) is stored as one object per file under its key.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from selftune.atomic import publish, staged_dir
from selftune.blobs import sha256_file
from selftune.errors import InvalidRequest, StorageUnavailable

log = logging.getLogger("selftune.storage")

PARALLEL = 4
"""Files of one folder moved at once (boto3's client is safe to share between threads)."""

PART_BYTES = 8 * 1024 * 1024
"""Multipart threshold and part size: larger objects go up and down in parts of this size."""


class Storage(Protocol):
    url: str
    remote: bool
    """False for the local folder: keys are paths under ``SELFTUNE_HOME`` and nothing moves."""

    def put(self, key: str, local: Path) -> None:
        """Store a file, or a folder's files, under ``key`` (replacing what was there)."""

    def get(self, key: str, local: Path) -> bool:
        """Download ``key`` (a file, or a folder's files) to ``local``, complete or not at all;
        False when the store has nothing under it."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key`` and everything under it (``key/...``)."""


class LocalStorage:
    """The folder ``SELFTUNE_HOME``: objects are already where their keys say."""

    remote = False

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = f"file://{home}"

    def put(self, key: str, local: Path) -> None:
        return None  # written in place by whoever made it

    def get(self, key: str, local: Path) -> bool:
        return (self.home / key).exists()

    def exists(self, key: str) -> bool:
        return (self.home / key).exists()

    def delete(self, key: str) -> None:
        return None  # the owners of the paths delete them (sweeper, model deletion)


class S3Storage:
    """An S3-compatible bucket (AWS, SeaweedFS, MinIO, Ceph...), under an optional prefix."""

    remote = True

    def __init__(self, url: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise InvalidRequest(f"SELFTUNE_STORAGE_URL={url!r}: name a bucket, as s3://bucket/prefix")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        # Endpoint, region and credentials come from the AWS_* variables (AWS_ENDPOINT_URL for
        # anything but AWS itself), exactly as for the aws CLI.
        # boto3 would also compute and check a CRC of every transfer: the SHA-256 stored with each
        # object is checked here already, and the second pass over the bytes costs a job about a second.
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
        self.client: Any = boto3.client("s3", config=config)
        self.transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """Fail at startup, with the reason, when the bucket cannot be reached."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise StorageUnavailable(
                f"cannot reach the bucket of SELFTUNE_STORAGE_URL={self.url} ({e}); check AWS_ENDPOINT_URL, "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the bucket exists"
            ) from e

    def put(self, key: str, local: Path) -> None:
        if local.is_dir():
            self.delete(key)  # a folder replaced: no file of the old one stays
            paths = sorted(p for p in local.rglob("*") if p.is_file())
            with ThreadPoolExecutor(PARALLEL) as pool:  # a folder's files at once (an adapter: weights and GGUF)
                list(pool.map(lambda p: self._put_file(f"{key}/{p.relative_to(local).as_posix()}", p), paths))
        else:
            self._put_file(key, local)

    def _put_file(self, key: str, path: Path) -> None:
        digest = sha256_file(path)
        try:
            self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs={"Metadata": {"sha256": digest}}, Config=self.transfer
            )
        except Exception as e:
            raise StorageUnavailable(f"storing {key} in {self.url} failed: {e}") from e

    def _list(self, key: str) -> list[str]:
        """Keys of the objects under ``key/`` (a folder), relative to it."""
        full = self._key(key).rstrip("/") + "/"
        out: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out += [obj["Key"][len(full) :] for obj in page.get("Contents", [])]
        except Exception as e:
            raise StorageUnavailable(f"listing {key} in {self.url} failed: {e}") from e
        return out

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return head
        except self.client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageUnavailable(f"reading {key} in {self.url} failed: {e}") from e
        except Exception as e:
            raise StorageUnavailable(f"reading {key} in {self.url} failed: {e}") from e

    def exists(self, key: str) -> bool:
        return self._head(key) is not None or bool(self._list(key))

    def get(self, key: str, local: Path) -> bool:
        local.parent.mkdir(parents=True, exist_ok=True)
        head = self._head(key)
        if head is not None:
            tmp = local.with_name(f".{local.name}.part")
            self._get_file(key, tmp, head)
            publish(tmp, local)
            return True
        names = self._list(key)
        if not names:
            return False
        shutil.rmtree(local, ignore_errors=True)

        def one(name: str, tmp_dir: Path) -> None:
            head = self._head(f"{key}/{name}")
            if head is not None:
                (tmp_dir / name).parent.mkdir(parents=True, exist_ok=True)
                self._get_file(f"{key}/{name}", tmp_dir / name, head)

        with staged_dir(local) as tmp_dir, ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(lambda name: one(name, tmp_dir), names))
        return True

    def _get_file(self, key: str, dest: Path, head: dict[str, Any]) -> None:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)
        except Exception as e:
            dest.unlink(missing_ok=True)
            raise StorageUnavailable(f"downloading {key} from {self.url} failed: {e}") from e
        expected = head.get("Metadata", {}).get("sha256")
        if expected and (actual := sha256_file(dest)) != expected:
            dest.unlink(missing_ok=True)
            raise StorageUnavailable(
                f"{key} in {self.url} has SHA-256 {actual}, but {expected} was stored: the object was changed or "
                "damaged in the store; it was not used"
            )

    def delete(self, key: str) -> None:
        keys = [self._key(key)] + [f"{self._key(key)}/{name}" for name in self._list(key)]
        try:
            for start in range(0, len(keys), 1000):  # the API's limit per call
                chunk = [{"Key": k} for k in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        except Exception as e:
            raise StorageUnavailable(f"deleting {key} from {self.url} failed: {e}") from e


def open_storage(url: str | None, home: Path) -> Storage:
    """The store ``SELFTUNE_STORAGE_URL`` names (the local folder when unset)."""
    if not url or url.startswith("file:"):
        return LocalStorage(home)
    if url.startswith("s3://"):
        storage = S3Storage(url)
        storage.check()
        return storage
    raise InvalidRequest(
        f"SELFTUNE_STORAGE_URL={url!r}: use s3://bucket/prefix, or leave it unset for the local folder"
    )
