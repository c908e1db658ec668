"""Engine factory (SQLite or PostgreSQL) and the writer lock. Bound parameters are never echoed.

SQLite: WAL, foreign keys, busy timeout, 0600 files. PostgreSQL (psycopg 3): pre-ping, session time
zone UTC (timestamps come back aware UTC), connect timeout.

The server is the single writer: every mutation runs under `Store.write()`, which holds a
process-wide lock and one transaction, so concurrent API threads never interleave half-writes. On
PostgreSQL the transaction also takes `pg_advisory_xact_lock(WRITE_LOCK)` first, so writers in several
replicas serialize exactly like threads of one process (read-modify-write stays correct).

Danger: a PostgreSQL URL may carry a password. Never put the URL in an error, log or repr: use
`redact_url`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlmodel import Session, create_engine

from agent_vault.errors import DatabaseUnreadable, InvalidRequest
from agent_vault.store import changes
from agent_vault.store.migrations import migrate

Dialect = Literal["sqlite", "postgresql"]
# pg_advisory_xact_lock key every Store.write() transaction takes on PostgreSQL (fixed, arbitrary).
WRITE_LOCK = 0x6176_7772_6974_6501
_PG_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_postgres(url: str) -> bool:
    return url.startswith(_PG_PREFIXES)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages (never the raw URL)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def unreachable(url: str, exc: BaseException) -> DatabaseUnreadable:
    """A one-line error for a database that cannot be opened: the redacted URL and the driver's first
    line, with the URL's password scrubbed from it in case the driver echoed it."""
    orig = getattr(exc, "orig", None) or exc
    detail = " ".join(line.strip() for line in str(orig).splitlines() if line.strip()) or type(orig).__name__
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if password:
        detail = detail.replace(str(password), "***")
    return DatabaseUnreadable(
        f"cannot open the database {redact_url(url)}: {detail[:300]}",
        hint="Check that PostgreSQL is running and the URL (user, host, port, database) is right.",
    )


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` / `postgres://` -> the psycopg 3 driver URL; SQLite URLs unchanged.

    Raises InvalidRequest for anything else (the message never contains the URL)."""
    if url.startswith("sqlite:///"):
        return url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith("postgresql+psycopg://"):
        return url
    raise InvalidRequest(
        "the database URL must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
        hint="Check --database-url / DATABASE_URL.",
    )


def _touch_private(path: Path) -> None:
    """Create the DB file 0600 before SQLite does (never written then chmod-ed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _sqlite_engine(url: str) -> Engine:
    if url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        _touch_private(path)
        for suffix in ("-wal", "-shm"):
            _touch_private(Path(str(path) + suffix))
    engine = create_engine(
        url,
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": 5.0},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def _postgres_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidRequest(
            "the PostgreSQL URL cannot be parsed",
            hint="postgresql://USER@HOST:PORT/DB",
        ) from None
    return create_engine(
        parsed,
        hide_parameters=True,
        pool_pre_ping=True,
        connect_args={"options": "-c timezone=UTC", "connect_timeout": 10, "application_name": "agent-vault"},
    )


def make_engine(url: str) -> Engine:
    """An engine for a sqlite:/// or postgresql:// URL. Errors never echo parameters or the password."""
    url = sqlalchemy_url(url)
    return _postgres_engine(url) if is_postgres(url) else _sqlite_engine(url)


class Store:
    """The open database: an engine, migrated, plus the writer lock."""

    def __init__(self, url: str) -> None:
        """Open and migrate to head. Raises SchemaTooNew for a database written by a newer version."""
        self.engine = make_engine(url)
        self.dialect: Dialect = "postgresql" if self.engine.dialect.name == "postgresql" else "sqlite"
        try:
            self.schema_version = migrate(self.engine)
        except (OperationalError, InterfaceError) as exc:
            self.engine.dispose()
            if self.dialect != "postgresql":
                raise
            raise unreachable(url, exc) from None
        except BaseException:
            self.engine.dispose()
            raise
        self._lock = threading.RLock()
        self._depth = threading.local()  # write() nesting in this thread

    def __repr__(self) -> str:
        return f"Store(dialect={self.dialect}, schema_version={self.schema_version})"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction under the writer lock (and, on PostgreSQL, the cross-replica advisory lock
        taken first); commits on success, rolls back on any error. A nested write() in the same thread
        does not take the advisory lock again (its own connection would wait for the outer one forever)."""
        with self._lock, Session(self.engine, expire_on_commit=False) as s:
            depth = getattr(self._depth, "n", 0)
            self._depth.n = depth + 1
            changes.track(s)  # snapshot tables touched: bump the change counter in this transaction
            try:
                if self.dialect == "postgresql" and depth == 0:
                    s.connection().execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
            finally:
                self._depth.n = depth

    def close(self) -> None:
        self.engine.dispose()
