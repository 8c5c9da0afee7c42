"""Schema migrations (Alembic), run by ``Store`` on start, on SQLite and PostgreSQL alike.

``upgrade(engine)`` brings any database to the newest schema: a new one is created by the
migrations themselves, and one made by selftune 0.1.0 (whose store called ``create_all`` and kept
no version) is recognised by its tables, stamped as revision ``0001`` and upgraded from there.
Two processes starting at once (``selftune serve`` and ``selftune worker``) do not race: PostgreSQL
takes a transaction-level advisory lock, SQLite a file lock beside the database file.

A change to the tables in ``selftune.store`` comes with a new file in ``versions/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

from selftune.atomic import locked

HERE = Path(__file__).parent
FIRST = "0001"
"""The schema of selftune 0.1.0, which predates migrations."""
LOCK_KEY = 0x5E1F7E  # PostgreSQL advisory lock id: any constant that is ours


def upgrade(engine: Engine) -> None:
    with _locked(engine) as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(HERE))
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "files" in tables:
            command.stamp(cfg, FIRST)
        command.upgrade(cfg, "head")


def current(engine: Engine) -> str | None:
    """The revision a database is at (None before any migration)."""
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield conn
        return
    database = engine.url.database
    if not database or database == ":memory:":
        with engine.begin() as conn:
            yield conn
        return
    with locked(Path(f"{database}.migrate.lock")), engine.begin() as conn:
        yield conn
