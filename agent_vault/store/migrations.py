"""Numbered, frozen migrations: each one explicit SQL, applied in one transaction, recorded once.

Rules (ARCHITECTURE §4 "Migrations"):
- A migration is literal SQL text, never derived from the models: once released it is frozen, so a
  later model change cannot alter what version N means. A model change ships with a NEW migration,
  and `tests/unit/test_migrations.py` (the drift test) fails until it does.
- Each step runs in one transaction together with its `schema_migrations` row: it is applied whole
  or not at all, and a second process opening the same database concurrently waits and skips it.
- A database whose recorded version is newer than `LATEST` is refused (`SchemaTooNew`): old code
  must not write to a schema it does not know.
- Each version is written twice, both frozen: the SQLite statements here and the PostgreSQL ones in
  `migrations_pg.py` (same version, same meaning). The engine's dialect picks the text.
- Concurrency: on SQLite `BEGIN IMMEDIATE` queues concurrent openers; on PostgreSQL the whole run holds
  a session advisory lock (`MIGRATE_LOCK`), so replicas starting together migrate once, in turn.

Migration 1 is the schema that `SQLModel.metadata.create_all` produced for SQLite when it was
migration 1 (compiled with SQLAlchemy's CreateTable/CreateIndex, pasted verbatim); databases it
created then are recorded as version 1 and are never migrated to 1 again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine

from agent_vault.errors import SchemaTooNew
from agent_vault.store.migrations_pg import PG

# pg_advisory_lock key held for a whole migration run on PostgreSQL (a fixed, arbitrary 64-bit value).
MIGRATE_LOCK = 0x6176_6D69_6772_0001


@dataclass(frozen=True, slots=True)
class Migration:
    """One version: `statements` for SQLite, `postgresql` for PostgreSQL (both frozen literal SQL)."""

    version: int
    name: str
    statements: tuple[str, ...]
    postgresql: tuple[str, ...] = ()

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        return self.postgresql if dialect == "postgresql" else self.statements


_V1 = (
    """CREATE TABLE agents (
	id INTEGER NOT NULL,
	name VARCHAR NOT NULL,
	description VARCHAR NOT NULL,
	status VARCHAR NOT NULL,
	created_at DATETIME NOT NULL,
	last_used_at DATETIME,
	PRIMARY KEY (id)
)""",
    "CREATE UNIQUE INDEX ix_agents_name ON agents (name)",
    """CREATE TABLE audit_events (
	seq INTEGER NOT NULL,
	ts VARCHAR NOT NULL,
	kind VARCHAR NOT NULL,
	actor VARCHAR NOT NULL,
	vault VARCHAR,
	decision VARCHAR,
	host VARCHAR,
	status INTEGER,
	record TEXT NOT NULL,
	hash VARCHAR NOT NULL,
	PRIMARY KEY (seq)
)""",
    "CREATE INDEX ix_audit_events_kind ON audit_events (kind)",
    "CREATE INDEX ix_audit_events_ts ON audit_events (ts)",
    "CREATE INDEX ix_audit_events_vault ON audit_events (vault)",
    """CREATE TABLE invites (
	id INTEGER NOT NULL,
	digest VARCHAR NOT NULL,
	email VARCHAR NOT NULL,
	role VARCHAR NOT NULL,
	vaults TEXT NOT NULL,
	created_at DATETIME NOT NULL,
	expires_at DATETIME NOT NULL,
	accepted_at DATETIME,
	created_by VARCHAR NOT NULL,
	PRIMARY KEY (id)
)""",
    "CREATE UNIQUE INDEX ix_invites_digest ON invites (digest)",
    """CREATE TABLE master_key (
	id INTEGER NOT NULL,
	wrapped_dek BLOB NOT NULL,
	salt BLOB NOT NULL,
	time_cost INTEGER NOT NULL,
	memory_kib INTEGER NOT NULL,
	parallelism INTEGER NOT NULL,
	key_version INTEGER NOT NULL,
	PRIMARY KEY (id)
)""",
    """CREATE TABLE users (
	id INTEGER NOT NULL,
	email VARCHAR NOT NULL,
	password_hash VARCHAR NOT NULL,
	role VARCHAR NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
)""",
    "CREATE UNIQUE INDEX ix_users_email ON users (email)",
    """CREATE TABLE vaults (
	id INTEGER NOT NULL,
	name VARCHAR NOT NULL,
	unmatched_policy VARCHAR NOT NULL,
	enforcement VARCHAR NOT NULL,
	next_proposal_seq INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
)""",
    "CREATE UNIQUE INDEX ix_vaults_name ON vaults (name)",
    """CREATE TABLE credentials (
	id INTEGER NOT NULL,
	vault_id INTEGER NOT NULL,
	"key" VARCHAR NOT NULL,
	ciphertext BLOB,
	key_version INTEGER NOT NULL,
	description VARCHAR NOT NULL,
	version INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	updated_by VARCHAR NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (vault_id, "key"),
	FOREIGN KEY(vault_id) REFERENCES vaults (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_credentials_vault_id ON credentials (vault_id)",
    """CREATE TABLE grants (
	id INTEGER NOT NULL,
	vault_id INTEGER NOT NULL,
	subject_kind VARCHAR NOT NULL,
	subject_id INTEGER NOT NULL,
	role VARCHAR NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (vault_id, subject_kind, subject_id),
	FOREIGN KEY(vault_id) REFERENCES vaults (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_grants_vault_id ON grants (vault_id)",
    """CREATE TABLE proposals (
	id INTEGER NOT NULL,
	vault_id INTEGER NOT NULL,
	seq INTEGER NOT NULL,
	status VARCHAR NOT NULL,
	actor VARCHAR NOT NULL,
	message VARCHAR NOT NULL,
	services TEXT NOT NULL,
	credentials TEXT NOT NULL,
	review_note VARCHAR,
	reviewed_by VARCHAR,
	approval_digest VARCHAR,
	approval_expires_at DATETIME,
	created_at DATETIME NOT NULL,
	reviewed_at DATETIME,
	expires_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (vault_id, seq),
	FOREIGN KEY(vault_id) REFERENCES vaults (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_proposals_vault_id ON proposals (vault_id)",
    """CREATE TABLE services (
	id INTEGER NOT NULL,
	vault_id INTEGER NOT NULL,
	name VARCHAR NOT NULL,
	position INTEGER NOT NULL,
	enabled BOOLEAN NOT NULL,
	definition TEXT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (vault_id, name),
	FOREIGN KEY(vault_id) REFERENCES vaults (id) ON DELETE CASCADE
)""",
    "CREATE INDEX ix_services_vault_id ON services (vault_id)",
    """CREATE TABLE tokens (
	id INTEGER NOT NULL,
	digest VARCHAR NOT NULL,
	kind VARCHAR NOT NULL,
	user_id INTEGER,
	agent_id INTEGER,
	vault_id INTEGER,
	label VARCHAR NOT NULL,
	unmatched_policy VARCHAR,
	created_at DATETIME NOT NULL,
	expires_at DATETIME,
	revoked_at DATETIME,
	last_used_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE,
	FOREIGN KEY(agent_id) REFERENCES agents (id) ON DELETE CASCADE,
	FOREIGN KEY(vault_id) REFERENCES vaults (id) ON DELETE CASCADE
)""",
    "CREATE UNIQUE INDEX ix_tokens_digest ON tokens (digest)",
)

# Frozen. Append new versions at the end; never edit, reorder or remove a released one.
# The change counter replicas watch (store/changes.py): one row, portable DDL.
_V6 = (
    "CREATE TABLE changes (\n\tid INTEGER NOT NULL, \n\tversion INTEGER NOT NULL, "
    "\n\tvaults_version INTEGER NOT NULL, \n\tPRIMARY KEY (id)\n)",
    "INSERT INTO changes (id, version, vaults_version) VALUES (1, 0, 0)",
)
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _V1, PG[1]),
    Migration(
        2, "per-vault rate limit profile", ("ALTER TABLE vaults ADD COLUMN rate_limits VARCHAR",), PG[2]
    ),
    Migration(
        3,
        "dynamic credential sources",
        (
            "ALTER TABLE credentials ADD COLUMN source_kind VARCHAR",
            "ALTER TABLE credentials ADD COLUMN source BLOB",
            "ALTER TABLE credentials ADD COLUMN source_ttl FLOAT",
        ),
        PG[3],
    ),
    Migration(
        4,
        "narrowed sessions",
        (
            "ALTER TABLE tokens ADD COLUMN only_services VARCHAR",
            "ALTER TABLE tokens ADD COLUMN only_methods VARCHAR",
        ),
        PG[4],
    ),
    Migration(
        5,
        "instance state in the database",
        (
            """CREATE TABLE instance_state (
	id INTEGER NOT NULL,
	instance_id VARCHAR NOT NULL,
	key_mode VARCHAR NOT NULL,
	created_at DATETIME NOT NULL,
	ca_cert BLOB NOT NULL,
	ca_key_sealed BLOB NOT NULL,
	PRIMARY KEY (id)
)""",
        ),
        PG[5],
    ),
    Migration(6, "replica change counter", _V6, _V6),  # the same text on both engines
    Migration(
        7,
        "session parents",
        (
            "ALTER TABLE tokens ADD COLUMN parent_id INTEGER",
            "CREATE INDEX ix_tokens_parent_id ON tokens (parent_id)",
        ),
        PG[7],
    ),
)
LATEST = MIGRATIONS[-1].version
_CREATE = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"


def _begin(conn: Connection) -> None:
    """Open the step's transaction on the database itself. Python's sqlite3 driver starts one only
    before INSERT/UPDATE/DELETE, so DDL would otherwise autocommit statement by statement; IMMEDIATE
    takes the write lock up front so concurrent openers queue (busy timeout) instead of racing."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _applied(conn: Connection) -> set[int]:
    return {int(row[0]) for row in conn.execute(text("SELECT version FROM schema_migrations"))}


def _refuse_newer(applied: set[int]) -> None:
    newest = max(applied, default=0)
    if newest > LATEST:
        raise SchemaTooNew(
            f"the database schema is version {newest}, newer than this agent-vault supports ({LATEST})",
            db_version=newest,
            supported_version=LATEST,
        )


def schema_version(engine: Engine) -> int:
    """The highest recorded version (0 for a database never migrated)."""
    with engine.connect() as conn:
        conn.execute(text(_CREATE))
        conn.commit()
        return max(_applied(conn), default=0)


@contextmanager
def _run_lock(engine: Engine) -> Iterator[None]:
    """PostgreSQL: hold a session advisory lock for the whole run (released even on error). SQLite: none
    needed (each step's BEGIN IMMEDIATE serializes)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK})
            conn.commit()


def migrate(engine: Engine, target: int = LATEST) -> int:
    """Apply pending migrations up to `target` in order, one transaction each; return the version.

    Raises SchemaTooNew (before touching anything) when the database is newer than this code."""
    with _run_lock(engine):
        return _migrate(engine, target)


def _migrate(engine: Engine, target: int) -> int:
    _refuse_newer({schema_version(engine)})
    for m in MIGRATIONS:
        if m.version > target:
            break
        with engine.connect() as conn, conn.begin():
            _begin(conn)
            applied = _applied(conn)  # re-read under the write lock: another process may have run it
            _refuse_newer(applied)
            if m.version in applied:
                continue
            for statement in m.for_dialect(engine.dialect.name):
                conn.exec_driver_sql(statement)
            conn.execute(
                text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                {"v": m.version, "n": m.name},
            )
    return schema_version(engine)
