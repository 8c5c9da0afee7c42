"""Metadata in SQL: files, fine-tuned models and registered base models.

SQLAlchemy 2 Core on SQLite (default, under ``SELFTUNE_HOME``) or PostgreSQL
(``SELFTUNE_DATABASE_URL``), through the same code path. Each public method is one transaction.

Every query about user objects takes an ``owner`` and filters on it, so one owner can never see
another's objects: to them those ids simply do not exist (``NotFound``).

Rows are returned as frozen dataclasses; nothing above this module sees SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine

from selftune.errors import InvalidRequest, NotFound

metadata = MetaData()

files = Table(
    "files",
    metadata,
    # seq orders rows strictly (created_at has only one-second resolution) and backs cursors.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("filename", Text, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("status_details", Text, nullable=True),
    # Deleted rows stay (without their bytes) so a pagination cursor pointing at one still works.
    Column("deleted", Boolean, nullable=False, default=False),
)

models = Table(
    "models",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(512), nullable=False, unique=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("created", Integer, nullable=False),
    Column("base_model", String(512), nullable=False),
    Column("adapter_path", Text, nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("deleted", Boolean, nullable=False, default=False),
)

base_models = Table(
    "base_models",
    metadata,
    Column("name", String(512), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("gguf_file", Text, nullable=True),
    Column("created", Integer, nullable=False),
)


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    size_bytes: int
    created_at: int
    expires_at: int | None
    status: str
    status_details: str | None


@dataclass(frozen=True)
class ModelRecord:
    """A fine-tuned model: a LoRA adapter on a base model, owned by one owner."""

    id: str
    owner: str
    created: int
    base_model: str
    adapter_path: str
    job_id: str | None


@dataclass(frozen=True)
class BaseModelRecord:
    """A base model registered with ``selftune models add``; visible to every owner."""

    name: str
    source: str
    path: str
    gguf_file: str | None
    created: int


def _live_files() -> Any:
    """Files that are neither deleted nor past their ``expires_after``."""
    return and_(~files.c.deleted, or_(files.c.expires_at.is_(None), files.c.expires_at > int(time.time())))


def _row(cls: type[Any], row: Any) -> Any:
    fields = cls.__dataclass_fields__
    return cls(**{k: v for k, v in row._mapping.items() if k in fields})


class Store:
    """All SQL lives here. Safe to share between threads; each call opens its own transaction."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- files ------------------------------------------------------------------------------------

    def insert_file(self, rec: FileRecord) -> None:
        with self._tx() as c:
            c.execute(insert(files).values(**rec.__dict__, deleted=False))

    def get_file(self, owner: str, file_id: str) -> FileRecord:
        with self._tx() as c:
            row = c.execute(select(files).where(files.c.id == file_id, files.c.owner == owner, _live_files())).first()
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")
        return _row(FileRecord, row)  # type: ignore[no-any-return]

    def list_files(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[FileRecord], bool]:
        """One page of an owner's files and whether more follow. ``after`` is a file id cursor."""
        with self._tx() as c:
            q = select(files).where(files.c.owner == owner, _live_files())
            if purpose:
                q = q.where(files.c.purpose == purpose)
            if after:
                seq = c.execute(select(files.c.seq).where(files.c.id == after, files.c.owner == owner)).scalar()
                if seq is None:
                    raise InvalidRequest(f"Unknown cursor: no file {after!r} to list after", param="after")
                q = q.where(files.c.seq < seq if order == "desc" else files.c.seq > seq)
            q = q.order_by(files.c.seq.desc() if order == "desc" else files.c.seq.asc()).limit(limit + 1)
            rows = c.execute(q).all()
        return [_row(FileRecord, r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, owner: str, file_id: str) -> None:
        with self._tx() as c:
            n = c.execute(
                update(files)
                .where(files.c.id == file_id, files.c.owner == owner, ~files.c.deleted)
                .values(deleted=True)
            ).rowcount
        if not n:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")

    # --- fine-tuned models ------------------------------------------------------------------------

    def insert_model(self, rec: ModelRecord) -> None:
        with self._tx() as c:
            c.execute(insert(models).values(**rec.__dict__, deleted=False))

    def find_model(self, owner: str, model_id: str) -> ModelRecord | None:
        with self._tx() as c:
            row = c.execute(
                select(models).where(models.c.id == model_id, models.c.owner == owner, ~models.c.deleted)
            ).first()
        return None if row is None else _row(ModelRecord, row)

    def list_models(self, owner: str) -> list[ModelRecord]:
        with self._tx() as c:
            rows = c.execute(
                select(models).where(models.c.owner == owner, ~models.c.deleted).order_by(models.c.seq)
            ).all()
        return [_row(ModelRecord, r) for r in rows]

    def delete_model(self, owner: str, model_id: str) -> bool:
        with self._tx() as c:
            n = c.execute(
                update(models)
                .where(models.c.id == model_id, models.c.owner == owner, ~models.c.deleted)
                .values(deleted=True)
            ).rowcount
        return bool(n)

    # --- base models ------------------------------------------------------------------------------

    def upsert_base_model(self, rec: BaseModelRecord) -> None:
        with self._tx() as c:
            c.execute(base_models.delete().where(base_models.c.name == rec.name))
            c.execute(insert(base_models).values(**rec.__dict__))

    def list_base_models(self) -> Sequence[BaseModelRecord]:
        with self._tx() as c:
            rows = c.execute(select(base_models).order_by(base_models.c.created, base_models.c.name)).all()
        return [_row(BaseModelRecord, r) for r in rows]

    def remove_base_model(self, name: str) -> bool:
        with self._tx() as c:
            return bool(c.execute(base_models.delete().where(base_models.c.name == name)).rowcount)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; a busy timeout instead of instant "locked" errors.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
