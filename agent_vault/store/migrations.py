"""Numbered migrations, each applied in one transaction; re-running is a no-op.

Migration 1 creates the schema from the SQLModel tables (as they are now: on a new database the
later steps find their changes already made, hence idempotent DDL). Later migrations are explicit
DDL appended to MIGRATIONS; never edit an applied one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from agent_vault import models  # noqa: F401  (registers the tables)


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def _add_column(conn: Connection, table: str, column: str, ddl: str) -> None:
    """ALTER TABLE ADD COLUMN unless present (migration 1 builds from today's models)."""
    if column not in {row[1] for row in conn.execute(text(f"PRAGMA table_info({table})"))}:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


def _v2(conn: Connection) -> None:
    _add_column(conn, "vaults", "rate_limits", "VARCHAR")


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial schema", _v1),
    (2, "per-vault rate limit profile", _v2),
]
LATEST = MIGRATIONS[-1][0]
_CREATE = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"


def migrate(engine: Engine) -> int:
    """Apply pending migrations in order; return the schema version."""
    with engine.begin() as conn:
        conn.execute(text(_CREATE))
        done = {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        with engine.begin() as conn:
            step(conn)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                {"v": version, "n": name},
            )
    return LATEST
