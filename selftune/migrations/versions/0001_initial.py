"""The schema of selftune 0.1.0: files, models, base models, jobs, job events and checkpoints.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.Text, nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    )
    op.create_table(
        "models",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(512), nullable=False, unique=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("created", sa.Integer, nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("adapter_path", sa.Text, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    )
    op.create_table(
        "base_models",
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("gguf_file", sa.Text, nullable=True),
        sa.Column("created", sa.Integer, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128), nullable=False, index=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("init_adapter", sa.Text, nullable=True),
        sa.Column("training_file", sa.String(64), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("method", sa.JSON, nullable=False),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("integrations", sa.JSON, nullable=True),
        sa.Column("model_name", sa.String(512), nullable=False),
        sa.Column("fine_tuned_model", sa.String(512), nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("finished_at", sa.Integer, nullable=True),
        sa.Column("trained_tokens", sa.Integer, nullable=True),
        sa.Column("estimated_finish", sa.Integer, nullable=True),
        sa.Column("result_files", sa.JSON, nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
    )
    op.create_table(
        "job_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=True),
    )
    op.create_table(
        "checkpoints",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("job_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.Integer, nullable=False),
        sa.Column("step_number", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("adapter_path", sa.Text, nullable=False),
    )
