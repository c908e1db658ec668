"""Store: migrations are idempotent, the schema matches the models, files are private."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from sqlalchemy import inspect
from sqlmodel import SQLModel

from agent_vault.store import Store
from agent_vault.store.migrations import LATEST, migrate


def test_migrations_rerun_is_noop_and_files_are_0600(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    store = Store(f"sqlite:///{db}")
    assert migrate(store.engine) == LATEST
    assert migrate(store.engine) == LATEST
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == LATEST
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_migrated_schema_matches_models(tmp_path: Path) -> None:
    """Drift test: every model table/column exists after migrating, and no extra table appears."""
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    insp = inspect(store.engine)
    tables = set(insp.get_table_names()) - {"schema_migrations"}
    assert tables == set(SQLModel.metadata.tables)
    for name, table in SQLModel.metadata.tables.items():
        cols = {c["name"] for c in insp.get_columns(name)}
        assert cols == {c.name for c in table.columns}, name
    store.close()


def test_foreign_keys_enforced(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.close()
