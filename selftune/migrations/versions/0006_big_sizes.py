"""Sizes and token counts as 64-bit integers: a file over 2 GiB (or a job of more than 2**31 tokens)
no longer fails on PostgreSQL, whose ``integer`` is 32 bits (SQLite's already holds 64).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

COLUMNS = (("files", "size_bytes", False), ("jobs", "trained_tokens", True))


def upgrade() -> None:
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=nullable)


def downgrade() -> None:
    for table, column, nullable in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=nullable)
