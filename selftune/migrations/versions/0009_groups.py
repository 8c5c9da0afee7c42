"""One job on many processes and machines: the processes a worker gives a job, its group, and the
``rendezvous`` table where a group's machines meet (``selftune.groups``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("nproc", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("group_name", sa.String(256), nullable=True))
        batch.add_column(sa.Column("nnodes", sa.Integer, nullable=False, server_default="1"))
    op.create_table(
        "rendezvous",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("group_name", sa.String(256), nullable=False),
        sa.Column("endpoint", sa.String(512), nullable=False),
        sa.Column("rdzv_id", sa.String(128), nullable=False),
        sa.Column("nnodes", sa.Integer, nullable=False),
        sa.Column("nproc", sa.Integer, nullable=False),
        sa.Column("seats", sa.Integer, nullable=False),
        sa.Column("members", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rendezvous")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("nnodes")
        batch.drop_column("group_name")
        batch.drop_column("nproc")
