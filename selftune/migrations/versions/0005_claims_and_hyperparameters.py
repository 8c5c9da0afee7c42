"""Claims with leases on the database's clock for jobs and objects; a job's hyperparameters stored once.

- ``jobs.worker_id`` and ``jobs.heartbeat_at`` (the worker's own clock) become ``claimed_by`` and
  ``lease_until`` (the database's clock, ``selftune.claims``); a running job's lease is its last
  heartbeat plus the 60 s a worker had before others took over.
- ``objects`` gets the same two columns: batches and exports are claimed like jobs.
- ``jobs.hyperparameters`` holds every resolved value (``beta`` too), and ``jobs.method`` only the
  method's type (and whatever else a method needs besides hyperparameters), where both held a copy.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

STALE_SECONDS = 60.0
"""How long a worker's heartbeat counted before this revision."""


def _jobs() -> sa.TableClause:
    """The columns of ``jobs`` this revision reads and writes, old and new."""
    return sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("worker_id", sa.String),
        sa.column("heartbeat_at", sa.Float),
        sa.column("claimed_by", sa.String),
        sa.column("lease_until", sa.Float),
        sa.column("hyperparameters", sa.JSON),
        sa.column("method", sa.JSON),
    )


def upgrade() -> None:
    for table in ("jobs", "objects"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("claimed_by", sa.String(256), nullable=True))
            batch.add_column(sa.Column("lease_until", sa.Float, nullable=True))
    conn = op.get_bind()
    jobs = _jobs()
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.worker_id, jobs.c.heartbeat_at, jobs.c.hyperparameters, jobs.c.method)
    )
    for row in rows.all():
        method: dict[str, Any] = dict(row.method or {"type": "supervised"})
        kind = method.get("type") or "supervised"
        nested = (method.pop(kind, None) or {}).get("hyperparameters") or {}
        values: dict[str, Any] = {
            "hyperparameters": {**(row.hyperparameters or {}), **nested},
            "method": {**method, "type": kind},
        }
        if row.worker_id:
            values["claimed_by"] = row.worker_id
            values["lease_until"] = (row.heartbeat_at or 0.0) + STALE_SECONDS
        conn.execute(sa.update(jobs).where(jobs.c.id == row.id).values(**values))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker_id")
        batch.drop_column("heartbeat_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(256), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.Float, nullable=True))
    conn = op.get_bind()
    jobs = _jobs()
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.claimed_by, jobs.c.lease_until, jobs.c.hyperparameters, jobs.c.method)
    )
    for row in rows.all():
        kind = (row.method or {}).get("type") or "supervised"
        hyper = dict(row.hyperparameters or {})
        common = {k: v for k, v in hyper.items() if k != "beta"}
        method = {**(row.method or {}), kind: {"hyperparameters": hyper}}
        heartbeat = (row.lease_until - STALE_SECONDS) if row.lease_until is not None else None
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == row.id)
            .values(hyperparameters=common, method=method, worker_id=row.claimed_by, heartbeat_at=heartbeat)
        )
    for table in ("jobs", "objects"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("claimed_by")
            batch.drop_column("lease_until")
