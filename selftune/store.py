"""Metadata in SQL: files, fine-tuning jobs (with events and checkpoints), models; and, through
``objects`` and ``claims``, the smaller resources and who works on what.

SQLAlchemy 2 Core on SQLite (default, under ``SELFTUNE_HOME``) or PostgreSQL
(``SELFTUNE_DATABASE_URL``), through the same code path. Each public method is one transaction.

Every query about user objects takes an ``owner`` and filters on it, so one owner can never see
another's objects: to them those ids simply do not exist (``NotFound``).

Rows are returned as the frozen records of ``selftune.tables``, which also holds the schema;
nothing above this module (and its two helpers, ``objects`` and ``claims``) sees SQL. Opening a
``Store`` builds or upgrades the database to that schema through ``selftune.migrations`` (Alembic).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Connection, Table, and_, create_engine, delete, event, insert, or_, select, update
from sqlalchemy.engine import Engine

from selftune.claims import Claims, db_epoch
from selftune.errors import InvalidRequest, NotFound
from selftune.ids import now, random_id
from selftune.migrations import upgrade
from selftune.objects import ObjectStore
from selftune.tables import (
    BaseModelRecord,
    CheckpointRecord,
    EventRecord,
    FileRecord,
    JobRecord,
    ModelRecord,
    ObjectRecord,
    WorkerRecord,
    base_models,
    checkpoints,
    files,
    job_events,
    jobs,
    metadata,
    models_table,
    record,
    row_values,
    workers,
)

__all__ = [
    "BaseModelRecord",
    "CheckpointRecord",
    "EventRecord",
    "FileRecord",
    "JobRecord",
    "ModelRecord",
    "ObjectRecord",
    "Store",
    "WorkerRecord",
    "metadata",
]


def _live_files() -> Any:
    """Files that are neither deleted nor past their ``expires_after``."""
    return and_(~files.c.deleted, or_(files.c.expires_at.is_(None), files.c.expires_at > int(time.time())))


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
        upgrade(self.engine)  # builds the schema of selftune.tables through the migrations; never create_all
        self.objects = ObjectStore(self.engine)
        """Stored responses, batches, uploads and exports (``selftune.objects``)."""
        self.claims = Claims(self.engine)
        """Who works on a job or an object, until when (``selftune.claims``)."""

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
        return record(FileRecord, row)

    def registered_file(self, file_id: str) -> FileRecord | None:
        """The live file under ``file_id``, whoever owns it (for ids derived from what made the file:
        a retried step finds what its first try registered); a deleted row under that id is dropped,
        so the id can be registered again."""
        with self._tx() as c:
            row = c.execute(select(files).where(files.c.id == file_id, _live_files())).first()
            if row is None:
                c.execute(delete(files).where(files.c.id == file_id, files.c.deleted))
        return None if row is None else record(FileRecord, row)

    def unregistered(self, file_ids: Iterable[str]) -> set[str]:
        """Which of ``file_ids`` (names of bytes on disk) no live file row holds."""
        ids, live = sorted(set(file_ids)), set[str]()
        with self._tx() as c:
            for start in range(0, len(ids), 500):  # within every database's limit on bound parameters
                q = select(files.c.id).where(files.c.id.in_(ids[start : start + 500]), _live_files())
                live.update(c.execute(q).scalars())
        return set(ids) - live

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
        return [record(FileRecord, r) for r in rows[:limit]], len(rows) > limit

    def set_file_validation(self, file_id: str, validation: dict[str, Any], checksum: str) -> None:
        with self._tx() as c:
            c.execute(update(files).where(files.c.id == file_id).values(validation=validation, checksum=checksum))

    def delete_file(self, owner: str, file_id: str) -> None:
        with self._tx() as c:
            n = c.execute(
                update(files)
                .where(files.c.id == file_id, files.c.owner == owner, ~files.c.deleted)
                .values(deleted=True)
            ).rowcount
        if not n:
            raise NotFound(f"No such File object: {file_id}", param="id", code="file_not_found")

    def expire_files(self) -> list[str]:
        """Mark every file past its ``expires_at`` deleted (it already reads as gone); their ids, whose
        bytes the caller removes."""
        with self._tx() as c:
            q = select(files.c.id).where(~files.c.deleted, files.c.expires_at <= int(time.time()))
            ids = list(c.execute(q).scalars())
            if ids:
                c.execute(update(files).where(files.c.id.in_(ids)).values(deleted=True))
        return ids

    # --- fine-tuned models ------------------------------------------------------------------------

    def insert_model(self, rec: ModelRecord) -> None:
        with self._tx() as c:
            c.execute(insert(models_table).values(**rec.__dict__, deleted=False))

    def find_model(self, owner: str, model_id: str) -> ModelRecord | None:
        with self._tx() as c:
            row = c.execute(
                select(models_table).where(
                    models_table.c.id == model_id, models_table.c.owner == owner, ~models_table.c.deleted
                )
            ).first()
        return None if row is None else record(ModelRecord, row)

    def list_models(self, owner: str) -> list[ModelRecord]:
        with self._tx() as c:
            rows = c.execute(
                select(models_table)
                .where(models_table.c.owner == owner, ~models_table.c.deleted)
                .order_by(models_table.c.seq)
            ).all()
        return [record(ModelRecord, r) for r in rows]

    def delete_model(self, owner: str, model_id: str) -> str | None:
        """Mark a fine-tuned model deleted. Returns its adapter folder when nothing needs it any more
        (no other model points at it, and no unfinished job continues training from it), so the
        caller can free the disk; None when the folder must stay or the model was not there.
        A job is unfinished while it has no ``finished_at``: every final status sets it
        (``selftune.jobs``), so the statuses are not listed again here."""
        with self._tx() as c:
            row = c.execute(
                select(models_table.c.seq, models_table.c.adapter_path).where(
                    models_table.c.id == model_id, models_table.c.owner == owner, ~models_table.c.deleted
                )
            ).first()
            if row is None:
                return None
            c.execute(update(models_table).where(models_table.c.seq == row.seq).values(deleted=True))
            path = row.adapter_path
            shared = c.execute(
                select(models_table.c.seq).where(models_table.c.adapter_path == path, ~models_table.c.deleted)
            ).first()
            continued = c.execute(
                select(jobs.c.id).where(jobs.c.init_adapter == path, jobs.c.finished_at.is_(None))
            ).first()
        return None if shared or continued else str(path)

    # --- fine-tuning jobs ------------------------------------------------------------------------

    def insert_job(self, rec: JobRecord, first_events: Sequence[tuple[str, str]] = ()) -> None:
        """Insert a job and its first (level, message) events in one transaction."""
        with self._tx() as c:
            c.execute(insert(jobs).values(**row_values(rec)))
            _insert_messages(c, rec.id, first_events)

    def get_job(self, owner: str | None, job_id: str) -> JobRecord:
        """A job by id; ``owner=None`` is the worker, which sees every owner's jobs."""
        with self._tx() as c:
            q = select(jobs).where(jobs.c.id == job_id)
            if owner is not None:
                q = q.where(jobs.c.owner == owner)
            row = c.execute(q).first()
        if row is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
        return record(JobRecord, row)

    def list_jobs(
        self, owner: str, *, limit: int = 20, after: str | None = None, metadata: dict[str, str] | None = None
    ) -> tuple[list[JobRecord], bool]:
        """One page of an owner's jobs, newest first, matching every ``metadata`` pair given."""
        with self._tx() as c:
            q = select(jobs).where(jobs.c.owner == owner)
            if after:
                seq = c.execute(select(jobs.c.seq).where(jobs.c.id == after, jobs.c.owner == owner)).scalar()
                if seq is None:
                    raise InvalidRequest(f"Unknown cursor: no fine-tuning job {after!r} to list after", param="after")
                q = q.where(jobs.c.seq < seq)
            out: list[JobRecord] = []
            # Metadata is JSON, which SQLite and PostgreSQL query differently; filtering while
            # streaming rows in order keeps one code path and still stops after one page.
            for row in c.execute(q.order_by(jobs.c.seq.desc()).execution_options(yield_per=100)):
                rec: JobRecord = record(JobRecord, row)
                if metadata and any((rec.metadata or {}).get(k) != v for k, v in metadata.items()):
                    continue
                out.append(rec)
                if len(out) > limit:
                    break
        return out[:limit], len(out) > limit

    def jobs_in(self, *statuses: str) -> list[JobRecord]:
        """Every owner's jobs in these statuses, oldest first (the worker's queue)."""
        with self._tx() as c:
            rows = c.execute(select(jobs).where(jobs.c.status.in_(statuses)).order_by(jobs.c.seq)).all()
        return [record(JobRecord, r) for r in rows]

    def transition(
        self,
        job_id: str,
        from_statuses: Sequence[str],
        values: dict[str, Any],
        events: Sequence[tuple[str, str]] = (),
        new_models: Sequence[ModelRecord] = (),
    ) -> bool:
        """Compare-and-set: update the job only if its status is one of ``from_statuses``; then add
        the (level, message) events and register the models, all in one transaction. False if the job
        had moved on (a cancel racing a finish, two workers claiming one job)."""
        with self._tx() as c:
            n = c.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(from_statuses)).values(**values)
            ).rowcount
            if not n:
                return False
            _insert_messages(c, job_id, events)
            for m in new_models:
                c.execute(insert(models_table).values(**m.__dict__, deleted=False))
        return True

    def claim_queued(
        self, queued: str, values: dict[str, Any], events: Sequence[tuple[str, str]], exclude: Iterable[str] = ()
    ) -> JobRecord | None:
        """The oldest job in status ``queued`` not in ``exclude``, moved with ``values`` (into ``running``, with
        a worker's lease) and ``events``; None when there is none. The candidates are read ``FOR UPDATE
        SKIP LOCKED`` (on PostgreSQL; SQLite has one writer anyway), so workers claiming at once take
        different jobs without waiting on each other, and the move is still a compare-and-set."""
        skip = list(exclude)
        with self._tx() as c:
            q = select(jobs.c.id).where(jobs.c.status == queued)
            if skip:
                q = q.where(jobs.c.id.not_in(skip))
            job_id = c.execute(q.order_by(jobs.c.seq).limit(1).with_for_update(skip_locked=True)).scalar()
            if job_id is None:
                return None
            n = c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == queued).values(**values)).rowcount
            if not n:
                return None
            _insert_messages(c, job_id, events)
            row = c.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return record(JobRecord, row)

    def update_job(self, job_id: str, values: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(**values))

    def add_events(self, job_id: str, items: Sequence[tuple[str, str, str, dict[str, Any] | None]]) -> None:
        """Append (level, type, message, data) events in order."""
        if items:
            with self._tx() as c:
                c.execute(insert(job_events), [_event(job_id, *item).__dict__ for item in items])

    def list_events(self, job_id: str, *, limit: int = 20, after: str | None = None) -> tuple[list[EventRecord], bool]:
        """Newest first; ``after`` is an event id, and the page holds events older than it."""
        return self._job_page(job_events, job_events.c.seq, EventRecord, job_id, limit, after, "event")

    def put_checkpoint(self, rec: CheckpointRecord, keep: Sequence[str]) -> None:
        """Record a checkpoint and forget this job's checkpoints whose adapter is no longer kept."""
        with self._tx() as c:
            c.execute(
                checkpoints.delete().where(
                    checkpoints.c.job_id == rec.job_id, checkpoints.c.step_number == rec.step_number
                )
            )
            c.execute(insert(checkpoints).values(**rec.__dict__))
            c.execute(
                checkpoints.delete().where(
                    checkpoints.c.job_id == rec.job_id, checkpoints.c.adapter_path.not_in(list(keep))
                )
            )

    def list_checkpoints(
        self, job_id: str, *, limit: int = 10, after: str | None = None
    ) -> tuple[list[CheckpointRecord], bool]:
        """Latest step first; ``after`` is a checkpoint id."""
        return self._job_page(
            checkpoints, checkpoints.c.step_number, CheckpointRecord, job_id, limit, after, "checkpoint"
        )

    def _job_page(
        self, table: Table, order: Any, cls: type[Any], job_id: str, limit: int, after: str | None, what: str
    ) -> tuple[list[Any], bool]:
        """One page of a job's rows in ``table``, descending by ``order``, strictly past the ``after`` row."""
        with self._tx() as c:
            q = select(table).where(table.c.job_id == job_id)
            if after:
                pos = c.execute(select(order).where(table.c.id == after, table.c.job_id == job_id)).scalar()
                if pos is None:
                    raise InvalidRequest(f"Unknown cursor: no {what} {after!r} in job {job_id}", param="after")
                q = q.where(order < pos)
            rows = c.execute(q.order_by(order.desc()).limit(limit + 1)).all()
        return [record(cls, r) for r in rows[:limit]], len(rows) > limit

    # --- base models ------------------------------------------------------------------------------

    def upsert_base_model(self, rec: BaseModelRecord) -> None:
        with self._tx() as c:
            c.execute(base_models.delete().where(base_models.c.name == rec.name))
            c.execute(insert(base_models).values(**rec.__dict__))

    def list_base_models(self) -> Sequence[BaseModelRecord]:
        with self._tx() as c:
            rows = c.execute(select(base_models).order_by(base_models.c.created, base_models.c.name)).all()
        return [record(BaseModelRecord, r) for r in rows]

    # --- workers ---------------------------------------------------------------------------------

    def worker_seen(self, rec: WorkerRecord) -> None:
        """Record a running worker, or refresh its row (``last_seen`` by the database's clock)."""
        values = {**rec.__dict__, "last_seen": db_epoch()}
        with self._tx() as c:
            if not c.execute(update(workers).where(workers.c.id == rec.id).values(**values)).rowcount:
                c.execute(insert(workers).values(**values))

    def worker_gone(self, worker_id: str) -> None:
        with self._tx() as c:
            c.execute(delete(workers).where(workers.c.id == worker_id))

    def list_workers(self, seen_within: float) -> list[WorkerRecord]:
        """The workers seen in the last ``seen_within`` seconds (by the database's clock); rows of
        workers silent for longer (killed, so they could not remove their row) are removed."""
        with self._tx() as c:
            c.execute(delete(workers).where(workers.c.last_seen < db_epoch() - seen_within))
            rows = c.execute(select(workers).order_by(workers.c.started_at, workers.c.id)).all()
        return [record(WorkerRecord, r) for r in rows]

    def remove_base_model(self, name: str) -> bool:
        with self._tx() as c:
            return bool(c.execute(base_models.delete().where(base_models.c.name == name)).rowcount)


def _insert_messages(c: Connection, job_id: str, messages: Sequence[tuple[str, str]]) -> None:
    """(level, message) pairs as message events, inside the caller's transaction."""
    if messages:
        c.execute(insert(job_events), [_event(job_id, level, "message", text, {}).__dict__ for level, text in messages])


def _event(job_id: str, level: str, type: str, message: str, data: dict[str, Any] | None) -> EventRecord:
    return EventRecord(random_id("ftevent-"), job_id, now(), level, type, message, data)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; a busy timeout instead of instant "locked" errors.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
