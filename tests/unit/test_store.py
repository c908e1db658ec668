"""Store: migrations are idempotent, files are private (the drift test is in test_migrations.py)."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

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


def test_upgrade_from_v1_adds_the_vault_rate_limits_column_and_keeps_rows(tmp_path: Path) -> None:
    """A database made before migration 2 (no vaults.rate_limits) is upgraded in place."""
    db = tmp_path / "old.db"
    Store(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE vaults DROP COLUMN rate_limits")
        for column in ("source_kind", "source", "source_ttl"):  # migration 3
            conn.execute(f"ALTER TABLE credentials DROP COLUMN {column}")
        for column in ("only_services", "only_methods"):  # migration 4
            conn.execute(f"ALTER TABLE tokens DROP COLUMN {column}")
        conn.execute("DROP TABLE instance_state")  # migration 5
        conn.execute("DROP TABLE changes")  # migration 6
        conn.execute("DROP INDEX ix_tokens_parent_id")  # migration 7
        conn.execute("ALTER TABLE tokens DROP COLUMN parent_id")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 2")
        conn.execute(
            "INSERT INTO vaults (name, unmatched_policy, enforcement, next_proposal_seq, created_at) "
            "VALUES ('old', 'deny', 'enforce', 1, '2026-01-01 00:00:00')"
        )
    store = Store(f"sqlite:///{db}")
    store.close()
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT name, unmatched_policy, rate_limits FROM vaults").fetchone()
        assert row == ("old", "deny", None)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == LATEST


def test_foreign_keys_enforced(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.close()
