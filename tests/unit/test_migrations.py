"""Migrations: frozen explicit steps, a drift test against the models, newer schemas refused.

The drift test compares a FRESH database migrated to head with one made by `create_all` from the
models: tables, columns (type, nullability, default, primary key), indexes, unique constraints and
foreign keys. A model change without a migration fails it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.env import base_env
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from agent_vault import models  # noqa: F401  (registers the tables)
from agent_vault.errors import SchemaTooNew
from agent_vault.store import Store, make_engine
from agent_vault.store import migrations as mig
from agent_vault.store.migrations import LATEST, MIGRATIONS, Migration, migrate


def _default(c: Any) -> Any:
    """The column default; PostgreSQL's auto-assigned ids (SERIAL from the models, IDENTITY from the
    migrations) both count as "auto" so the comparison sees they are auto-assigned, not how."""
    if c.get("identity") is not None or str(c["default"] or "").startswith("nextval("):
        return "auto"
    return c["default"]


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything the drift test compares, in an order-independent form."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(set(insp.get_table_names()) - {"schema_migrations"}):
        out[table] = {
            "columns": {
                c["name"]: (str(c["type"]), c["nullable"], _default(c), c.get("primary_key"))
                for c in insp.get_columns(table)
            },
            "pk": sorted(insp.get_pk_constraint(table)["constrained_columns"]),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)
            ),
            "unique": sorted(tuple(sorted(u["column_names"])) for u in insp.get_unique_constraints(table)),
            "fks": sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    tuple(sorted(f["options"].items())),
                )
                for f in insp.get_foreign_keys(table)
            ),
        }
    return out


def _from_models(path: Path) -> dict[str, Any]:
    engine = create_engine(f"sqlite:///{path}")
    SQLModel.metadata.create_all(engine)
    try:
        return _schema(engine)
    finally:
        engine.dispose()


def test_fresh_database_migrated_to_head_matches_the_models(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'migrated.db'}")
    try:
        migrated = _schema(store.engine)
    finally:
        store.close()
    expected = _from_models(tmp_path / "models.db")
    assert set(expected) == set(SQLModel.metadata.tables)  # the reference really is the models
    assert set(migrated) == set(expected), "a model table has no migration (or a migration no model)"
    for table in expected:
        assert migrated[table] == expected[table], f"table {table} drifted from its model: add a migration"


def test_postgres_database_migrated_to_head_matches_the_models(pg: Any) -> None:
    """The PostgreSQL statements of every version, applied in order, give the schema the models
    compile to on PostgreSQL (types incl. BYTEA / timestamptz / BIGINT, nullability, indexes, keys)."""
    store = Store(pg.new_database())
    reference = create_engine(pg.new_database().replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert store.dialect == "postgresql" and store.schema_version == LATEST
        migrated = _schema(store.engine)
        SQLModel.metadata.create_all(reference)
        expected = _schema(reference)
    finally:
        store.close()
        reference.dispose()
    assert set(migrated) == set(expected) == set(SQLModel.metadata.tables)
    for table in expected:
        assert migrated[table] == expected[table], f"table {table} drifted from its model on PostgreSQL"
    assert migrated["credentials"]["columns"]["ciphertext"][0] == "BYTEA"
    assert migrated["agents"]["columns"]["id"][2] == "auto"


def test_each_step_is_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that fails half-way leaves nothing behind: no table from its first statement, no row."""
    db = tmp_path / "x.db"
    Store(f"sqlite:///{db}").close()
    broken = Migration(LATEST + 1, "broken", ("CREATE TABLE half_done (id INTEGER)", "CREATE TABLE ("))
    monkeypatch.setattr(mig, "MIGRATIONS", (*MIGRATIONS, broken))
    monkeypatch.setattr(mig, "LATEST", LATEST + 1)
    engine = make_engine(f"sqlite:///{db}")
    try:
        with pytest.raises(OperationalError, match="syntax error"):
            migrate(engine, target=LATEST + 1)
    finally:
        engine.dispose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == LATEST


def _digest(migrations: tuple[Migration, ...], dialect: str) -> str:
    text = "\n--\n".join(f"{m.version}:{m.name}:" + "\n;\n".join(m.for_dialect(dialect)) for m in migrations)
    return hashlib.sha256(text.encode()).hexdigest()


def test_released_migrations_are_frozen() -> None:
    """Editing a released migration changes what its version means on existing databases: append a
    new one instead. (Update these digests only when a NEW version is appended.)"""
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert all(m.statements and m.postgresql for m in MIGRATIONS), "every version needs both texts"
    assert _digest(MIGRATIONS[:4], "sqlite") == FROZEN_DIGEST_1_4  # the SQLite text of 1-4 never changes
    assert _digest(MIGRATIONS, "sqlite") == FROZEN_DIGEST
    assert _digest(MIGRATIONS, "postgresql") == FROZEN_DIGEST_PG


FROZEN_DIGEST_1_4 = "be413a755e74fd5bfc5019745ba8e1f3fb53987281cc1ac0fdde8809be0edf61"
FROZEN_DIGEST = "6bb009850c00ed7b70f25d3bbf18fe1bf9485367a8e5f23d6f95972862715c88"
FROZEN_DIGEST_PG = "a196a377024ffc67000276a87884199d7b790b5863f3d3d149ee2b067eaed810"


def test_database_from_the_old_create_all_migration_keeps_opening(tmp_path: Path) -> None:
    """Databases made when migration 1 was `create_all` (recorded as 1 and 2) are never migrated again."""
    db = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{db}")
    SQLModel.metadata.create_all(engine)  # what old migration 1 did with the models of version 2:
    with engine.begin() as conn:  # today's, minus the columns later migrations add
        for column in ("source_kind", "source", "source_ttl"):  # migration 3
            conn.exec_driver_sql(f"ALTER TABLE credentials DROP COLUMN {column}")
        for column in ("only_services", "only_methods"):  # migration 4
            conn.exec_driver_sql(f"ALTER TABLE tokens DROP COLUMN {column}")
        conn.exec_driver_sql("DROP TABLE instance_state")  # migration 5
        conn.exec_driver_sql("DROP TABLE changes")  # migration 6
        conn.exec_driver_sql("DROP INDEX ix_tokens_parent_id")  # migration 7
        conn.exec_driver_sql("ALTER TABLE tokens DROP COLUMN parent_id")
        conn.exec_driver_sql(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO schema_migrations VALUES (1, 'initial schema'), (2, 'per-vault rate limit profile')"
        )
        conn.exec_driver_sql(
            "INSERT INTO vaults (name, unmatched_policy, enforcement, next_proposal_seq, "
            "created_at) VALUES ('kept', 'deny', 'enforce', 1, '2026-01-01 00:00:00')"
        )
    engine.dispose()
    store = Store(f"sqlite:///{db}")
    assert store.schema_version == LATEST
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM vaults").fetchall() == [("kept",)]
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == LATEST


def _set_version(db: Path, version: int) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?, 'from the future')", (version,)
        )


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    Store(f"sqlite:///{db}").close()
    _set_version(db, LATEST + 5)
    before = db.read_bytes()
    with pytest.raises(SchemaTooNew) as info:
        Store(f"sqlite:///{db}")
    err = info.value
    assert err.code == "schema_too_new"
    assert f"version {LATEST + 5}" in err.message and f"({LATEST})" in err.message
    assert "upgrade agent-vault" in err.hint.lower()
    assert "\n" not in err.message
    assert db.read_bytes() == before


def _env(home: Path) -> dict[str, str]:
    return base_env(home.parent, AGENT_VAULT_HOME=str(home))


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_server_and_cli_refuse_a_newer_database_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home)
    init = _cli(
        env,
        "init",
        "--key-mode",
        "passwordless",
        "--owner-email",
        "owner@example.com",
        "--password-stdin",
        "--yes",
        stdin="owner-password-123\n",
    )
    assert init.returncode == 0, init.stderr
    _set_version(home / "agent-vault.db", LATEST + 1)
    expected = (
        f"error: the database schema is version {LATEST + 1}, newer than this agent-vault supports "
        f"({LATEST}) (Upgrade agent-vault; this database was written by a newer version.)"
    )

    server = _cli(env, "server", "--port", "0", "--proxy-port", "0")
    assert server.returncode == 1
    assert server.stdout == ""
    assert server.stderr.strip().splitlines() == [expected]

    cli = _cli(env, "master-password", "set", "--password-stdin", stdin="a-new-master-password-1\n")
    assert cli.returncode == 1
    assert cli.stderr.strip().splitlines() == [expected]
