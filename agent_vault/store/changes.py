"""The change counter: how replicas sharing one database learn that the in-memory snapshot is stale.

Every write transaction (`Store.write()`) that touches a table the runtime snapshot is built from bumps
the one-row `changes` table IN THE SAME TRANSACTION (`track`): `version` for any such change,
`vaults_version` too when services, credentials or vaults changed (which needs the expensive full reload;
identity changes need only `Runtime.reload(vaults=False)`). On PostgreSQL the same transaction also
sends `NOTIFY agent_vault_changes`, which PostgreSQL delivers only if it commits. A change that commits
is therefore always visible to the version check, and a rolled-back one never is.

Bookkeeping that no snapshot reads (`last_used_at`) does not bump the counter: no reload storms from it.
`read_versions` is what `Runtime.reload` records as the state its snapshot reflects; the replica's
watcher (agent_vault/freshness.py) reloads when the database is ahead.
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.orm import Session

CHANNEL = "agent_vault_changes"
_ORIGINS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
# tables Runtime.reload reads (and the instance row, whose CA replicas follow); the second set needs the
# full (vaults=True) reload
IDENTITY_TABLES = frozenset({"tokens", "grants", "users", "agents"})
VAULT_TABLES = frozenset({"vaults", "services", "credentials", "instance_state"})
IGNORED_COLUMNS = frozenset({"last_used_at"})
_INFO_KEY = "agent_vault.changes"

Versions = tuple[int, int]  # (version, vaults_version)


def origin_of(engine: Engine) -> str:
    """This store's id, sent as the NOTIFY payload: a replica skips its own notifications."""
    return _ORIGINS.setdefault(engine, uuid.uuid4().hex)


def track(session: Session) -> None:
    """Make `session` (one write transaction) bump the counter when it flushes a watched change."""
    event.listen(session, "after_flush", _after_flush)


def _table(obj: Any) -> str | None:
    table = getattr(obj, "__tablename__", None)
    return table if isinstance(table, str) else None


def _changed_columns(obj: Any) -> bool:
    """True if an update of `obj` changes a column other than the ignored bookkeeping ones."""
    state = inspect(obj)
    return any(attr.key not in IGNORED_COLUMNS and attr.history.has_changes() for attr in state.attrs)


def touched(session: Session) -> set[str]:
    """The kinds of watched change pending in `session`: a subset of {"identity", "vaults"}."""
    kinds: set[str] = set()
    for obj in (*session.new, *session.deleted, *(o for o in session.dirty if _changed_columns(o))):
        table = _table(obj)
        if table in VAULT_TABLES:
            kinds.add("vaults")
        elif table in IDENTITY_TABLES:
            kinds.add("identity")
    return kinds


def _after_flush(session: Session, _ctx: Any) -> None:
    kinds = touched(session)
    done: set[str] = session.info.setdefault(_INFO_KEY, set())
    if not kinds - done:
        return  # nothing watched, or already counted in this transaction
    vaults = "vaults" in kinds - done
    done |= kinds
    conn = session.connection()
    extra = ", vaults_version = vaults_version + 1" if vaults else ""
    conn.execute(text(f"UPDATE changes SET version = version + 1{extra} WHERE id = 1"))  # noqa: S608
    if conn.dialect.name == "postgresql":
        origin = origin_of(conn.engine)
        conn.execute(text("SELECT pg_notify(:channel, :origin)"), {"channel": CHANNEL, "origin": origin})


def read_versions(session: Session) -> Versions:
    """(version, vaults_version) as committed; (0, 0) if the row is missing."""
    row = (
        session.connection().execute(text("SELECT version, vaults_version FROM changes WHERE id = 1")).first()
    )
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


def listen_connection(engine: Engine) -> Any:
    """A NEW autocommit psycopg connection made like the engine's own (detached from its pool), for
    the replica's LISTEN. The caller closes it."""
    raw = engine.raw_connection()
    conn = raw.driver_connection
    raw.detach()
    if conn is None:
        raise RuntimeError("the database driver gave no connection")
    conn.rollback()
    conn.autocommit = True
    return conn
