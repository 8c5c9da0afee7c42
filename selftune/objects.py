"""The ``objects`` table: the API's smaller resources kept whole as JSON (stored responses, batches,
uploads, exports), each row with its kind, owner and status.

Every query about a user's objects takes an ``owner`` and filters on it (``owner=None`` is a
background runner, which sees every owner's). A status change is a compare-and-set on the status it
started from (``update(..., from_statuses=...)``), which ``selftune.lifecycle`` builds every move on;
claims on these rows are ``selftune.claims``'. Typed access is ``lifecycle.Objects``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from selftune.errors import InvalidRequest, NotFound
from selftune.tables import UNCLAIMED, ObjectRecord, objects, record


class ObjectStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, rec: ObjectRecord) -> None:
        with self.engine.begin() as c:
            c.execute(insert(objects).values(**rec.__dict__, deleted=False))

    def get(self, kind: str, owner: str | None, object_id: str, what: str) -> ObjectRecord:
        with self.engine.begin() as c:
            q = select(objects).where(objects.c.id == object_id, objects.c.kind == kind, ~objects.c.deleted)
            if owner is not None:
                q = q.where(objects.c.owner == owner)
            row = c.execute(q).first()
        if row is None:
            raise NotFound(f"No such {what}: {object_id}", param="id", code=f"{kind}_not_found")
        return record(ObjectRecord, row)

    def page(
        self, kind: str, owner: str, *, limit: int = 20, after: str | None = None, oldest_first: bool = False
    ) -> tuple[list[ObjectRecord], bool]:
        """One page of an owner's objects of a kind, newest (or oldest) first; ``after`` is an id cursor."""
        with self.engine.begin() as c:
            q = select(objects).where(objects.c.kind == kind, objects.c.owner == owner, ~objects.c.deleted)
            if after:
                seq = c.execute(select(objects.c.seq).where(objects.c.id == after, objects.c.owner == owner)).scalar()
                if seq is None:
                    raise InvalidRequest(f"Unknown cursor: no {kind} {after!r} to list after", param="after")
                q = q.where(objects.c.seq > seq if oldest_first else objects.c.seq < seq)
            order = objects.c.seq if oldest_first else objects.c.seq.desc()
            rows = c.execute(q.order_by(order).limit(limit + 1)).all()
        return [record(ObjectRecord, r) for r in rows[:limit]], len(rows) > limit

    def children(
        self,
        kind: str,
        owner: str | None,
        prefix: str,
        *,
        limit: int,
        after: str | None,
        newest_first: bool,
        status: str | None = None,
    ) -> tuple[list[ObjectRecord], bool]:
        """One page of the objects of a kind whose ids start with ``prefix`` (an eval's runs, a run's
        output items: their ids hold their parent's, then their order), in id order, optionally in
        one status; ``after`` is an id cursor."""
        with self.engine.begin() as c:
            q = select(objects).where(
                objects.c.kind == kind, objects.c.id.startswith(prefix, autoescape=True), ~objects.c.deleted
            )
            if owner is not None:
                q = q.where(objects.c.owner == owner)
            if status is not None:
                q = q.where(objects.c.status == status)
            if after:
                q = q.where(objects.c.id < after if newest_first else objects.c.id > after)
            order = objects.c.id.desc() if newest_first else objects.c.id
            rows = c.execute(q.order_by(order).limit(limit + 1)).all()
        return [record(ObjectRecord, r) for r in rows[:limit]], len(rows) > limit

    def in_status(self, kind: str, *statuses: str) -> list[ObjectRecord]:
        """Every owner's objects of a kind in these statuses, oldest first."""
        with self.engine.begin() as c:
            q = select(objects).where(objects.c.kind == kind, objects.c.status.in_(statuses), ~objects.c.deleted)
            rows = c.execute(q.order_by(objects.c.seq)).all()
        return [record(ObjectRecord, r) for r in rows]

    def update(
        self, object_id: str, status: str, data: dict[str, Any], from_statuses: Sequence[str], *, release: bool = False
    ) -> bool:
        """Replace an object's status and data, only if its status is one of ``from_statuses``; with
        ``release``, whoever held a claim on it lets it go in the same write."""
        with self.engine.begin() as c:
            q = update(objects).where(objects.c.id == object_id, objects.c.status.in_(from_statuses))
            values = {"status": status, "data": data, **(UNCLAIMED if release else {})}
            return bool(c.execute(q.values(**values)).rowcount)

    def delete(self, kind: str, owner: str, object_id: str, what: str) -> None:
        with self.engine.begin() as c:
            n = c.execute(
                update(objects)
                .where(objects.c.id == object_id, objects.c.kind == kind, objects.c.owner == owner, ~objects.c.deleted)
                .values(deleted=True)
            ).rowcount
        if not n:
            raise NotFound(f"No such {what}: {object_id}", param="id", code=f"{kind}_not_found")
