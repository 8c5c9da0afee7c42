"""Alembic's entry point: runs the migrations on the connection ``selftune.migrations.upgrade`` holds."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets SQLite, which cannot alter columns in place, take the same migrations as PostgreSQL.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
