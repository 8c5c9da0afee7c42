"""Claims with leases: which process works on a job or an object in the background, and until when.

A claim is two columns of the row (``tables.claim_columns``): ``claimed_by``, the holder's id
(``host:pid:random``, from ``holder_id``), and ``lease_until``, the moment the claim lapses unless it
is renewed, in seconds by the **database's** clock (``db_epoch``), never a machine's own: two
machines whose clocks disagree still agree on whose lease has lapsed.

- A job is claimed by the move that starts it (``jobs`` passes ``lease(holder)`` as the move's
  values) and released by every move out of the statuses a worker holds it in.
- An object (a batch, an export) is claimed by ``claim_object``: the oldest one of its kind in the
  given statuses that nobody holds, or whose lease lapsed, taken with a compare-and-set; a move into
  a status no process holds releases it (``lifecycle.Objects.apply``).
- ``LeaseKeeper`` renews a holder's leases from a thread of its own, every third of the lease, so a
  loop that is busy or blocked (converting a base model, answering a long line) never loses them;
  what it failed to renew (cancelled meanwhile, or taken over after a stall) it reports as lost.
- Whoever finds a lapsed claim takes the work over: a worker requeues the job from its last saved
  state (``worker``), a server resumes the batch from its progress files (``batch_runner``) or
  builds the export again (``export.runner``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Float, Table, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from selftune.children import alive
from selftune.ids import random_id
from selftune.tables import UNCLAIMED, JobRecord, ObjectRecord, jobs, objects, record

log = logging.getLogger("selftune.claims")

TABLES: dict[str, Table] = {"jobs": jobs, "objects": objects}


class db_epoch(FunctionElement[float]):  # an SQL function, named like one
    """Seconds since 1970 by the database server's clock, as a float."""

    type = Float()
    inherit_cache = True


@compiles(db_epoch)
def _sqlite_epoch(element: db_epoch, compiler: SQLCompiler, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_epoch, "postgresql")
def _postgres_epoch(element: db_epoch, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXTRACT(EPOCH FROM clock_timestamp())"


def holder_id() -> str:
    """A new holder's id: where it runs (host name and process-id namespace, so a process can spot
    its dead predecessors on the same host at once, ``dead_here``), its process id, and a random part
    so that two holders in one process differ: ``host@namespace:pid:random``."""
    return f"{_place()}:{os.getpid()}:{random_id('', 6)}"


def _place() -> str:
    """This process's host name and process-id namespace: containers that share a host name (or a
    host) have namespaces of their own, where a process id means another process."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}@{namespace}"


def dead_here(holder: str | None, me: str) -> bool:
    """Whether ``holder`` was a process of this host and namespace that is gone (or whose process id
    this process has now): its claims need not wait for their leases to lapse."""
    if not holder or holder == me:
        return False
    place, _, rest = holder.partition(":")
    try:
        pid = int(rest.partition(":")[0])
    except ValueError:
        return False
    return place == _place() and (pid == os.getpid() or not alive(pid))


def lease(holder: str, seconds: float) -> dict[str, Any]:
    """The values that claim a row for ``holder`` for ``seconds`` (part of a compare-and-set move)."""
    return {"claimed_by": holder, "lease_until": db_epoch() + seconds}


def _free(table: Table) -> Any:
    return or_(table.c.claimed_by.is_(None), table.c.lease_until < db_epoch())


class Claims:
    """The claim queries, on the ``jobs`` and ``objects`` tables alike."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim_object(self, kind: str, statuses: Iterable[str], holder: str, seconds: float) -> ObjectRecord | None:
        """The oldest object of ``kind`` in ``statuses`` that nobody holds (or whose lease lapsed),
        now held by ``holder``; None when there is none."""
        statuses = list(statuses)
        with self.engine.begin() as c:
            q = select(objects.c.id).where(
                objects.c.kind == kind, objects.c.status.in_(statuses), ~objects.c.deleted, _free(objects)
            )
            candidates = c.execute(q.order_by(objects.c.seq).limit(8)).scalars().all()
        for object_id in candidates:
            with self.engine.begin() as c:
                took = c.execute(
                    update(objects)
                    .where(objects.c.id == object_id, objects.c.status.in_(statuses), _free(objects))
                    .values(**lease(holder, seconds))
                ).rowcount
                if took:
                    row = c.execute(select(objects).where(objects.c.id == object_id)).first()
                    return record(ObjectRecord, row)
        return None  # none free, or every candidate was taken by another holder meanwhile

    def release_dead(self, kind: str, statuses: Iterable[str], me: str) -> None:
        """Free the claims on objects of ``kind`` held by a process of this host that is gone (a
        server restarted after a crash takes its batches back at once, not a lease later)."""
        with self.engine.begin() as c:
            rows = c.execute(
                select(objects.c.id, objects.c.claimed_by).where(
                    objects.c.kind == kind, objects.c.status.in_(list(statuses)), objects.c.claimed_by.is_not(None)
                )
            ).all()
        for row in rows:
            if dead_here(row.claimed_by, me):
                log.warning("%s %s was held by %s, which is gone; freeing it", kind, row.id, row.claimed_by)
                self.release("objects", row.claimed_by, row.id)

    def renew(self, table: str, holder: str, ids: Sequence[str], seconds: float) -> set[str]:
        """Extend ``holder``'s leases on these rows; the ids it still held (and now holds longer)."""
        if not ids:
            return set()
        t = TABLES[table]
        with self.engine.begin() as c:
            c.execute(
                update(t).where(t.c.id.in_(ids), t.c.claimed_by == holder).values(lease_until=db_epoch() + seconds)
            )
            held = c.execute(select(t.c.id).where(t.c.id.in_(ids), t.c.claimed_by == holder)).scalars().all()
        return set(held)

    def release(self, table: str, holder: str, row_id: str) -> None:
        """Give a row up (only if ``holder`` still holds it)."""
        t = TABLES[table]
        with self.engine.begin() as c:
            c.execute(update(t).where(t.c.id == row_id, t.c.claimed_by == holder).values(**UNCLAIMED))

    def lapsed_jobs(self, statuses: Iterable[str]) -> list[JobRecord]:
        """Jobs in ``statuses`` whose worker's lease has lapsed (or that nobody holds)."""
        with self.engine.begin() as c:
            rows = c.execute(
                select(jobs).where(jobs.c.status.in_(list(statuses)), _free(jobs)).order_by(jobs.c.seq)
            ).all()
        return [record(JobRecord, r) for r in rows]


class LeaseKeeper:
    """Renews one holder's leases on one table from its own thread, every third of the lease."""

    def __init__(self, claims: Claims, table: str, holder: str, seconds: float) -> None:
        self.claims, self.table, self.holder, self.seconds = claims, table, holder, seconds
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"selftune-leases-{table}", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def hold(self, row_id: str) -> None:
        with self._lock:
            self._held.add(row_id)
            self._lost.discard(row_id)

    def drop(self, row_id: str) -> None:
        with self._lock:
            self._held.discard(row_id)
            self._lost.discard(row_id)

    def lost(self, row_id: str) -> bool:
        """Whether the lease on ``row_id`` could not be renewed: another process may work on it now."""
        with self._lock:
            return row_id in self._lost

    def renew_now(self) -> None:
        with self._lock:
            held = sorted(self._held)
        if not held:
            return
        kept = self.claims.renew(self.table, self.holder, held, self.seconds)
        with self._lock:
            for row_id in set(held) - kept:
                if row_id in self._held:
                    log.warning("lost the claim on %s %s", self.table, row_id)
                    self._held.discard(row_id)
                    self._lost.add(row_id)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew_now()
            except Exception:  # a database blip: the next round tries again, well within the lease
                log.exception("renewing leases failed")
