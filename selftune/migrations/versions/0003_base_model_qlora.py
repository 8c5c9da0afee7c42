"""A registered base model can ask for its jobs to train on a 4-bit base (``models add --qlora``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("base_models") as batch:
        batch.add_column(sa.Column("qlora", sa.Boolean, nullable=False, server_default=sa.false()))
