"""Writing files so that nothing is ever half-written: a unique temporary name beside the target,
the bytes flushed and fsynced, a rename into place, then an fsync of the folder.

A reader sees the old file or the new one, never a mix; a crash (even a power cut, thanks to the
two fsyncs) leaves at most a hidden ``.NAME.*.tmp`` beside it, never a torn file under the real
name. Every write that publishes data goes through here: ``write_atomic`` for text and bytes, ``staged``
and ``staged_dir`` for a file or folder a library writes (a checkpoint, a GGUF, an export),
``publish`` for one built elsewhere (a streamed upload); ``locked`` keeps two processes from
building the same thing at once; ``remove_tree`` removes only inside the folder it is given.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), atomically and durably."""
    with staged(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A unique temporary path beside ``path``: write it in the ``with`` block, and on success it is
    published as ``path`` (see ``publish``); on an exception it is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextmanager
def staged_dir(path: Path) -> Iterator[Path]:
    """Like ``staged`` for a folder: fill the yielded empty folder; on success it becomes ``path``
    (which must not exist yet, or be an empty folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        publish(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed) for the ``with`` block: two processes that
    would write the same thing (convert one model) take turns instead."""
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_tree(path: Path, root: Path) -> None:
    """Remove the file or folder ``path``, which must lie inside ``root`` (and not be ``root``): a path
    made from a name, a database row or a request can then never reach beyond the folder it belongs
    to (a model named ``..`` removing the whole home, say). Nothing there is nothing to do."""
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ValueError(f"refusing to remove {path}: it is not inside {root}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished file or folder ``tmp`` to ``path`` (same filesystem): its contents are
    fsynced first, the folder that holds it after, so the rename survives a crash."""
    _fsync_tree(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
        return
    with path.open("rb") as f:
        os.fsync(f.fileno())
