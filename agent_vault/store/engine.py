"""Engine factory: WAL, foreign keys, busy timeout, hidden bound parameters, 0600 files.

The server is the single writer: every mutation runs under `Store.write()`, which holds a
process-wide lock and one transaction, so concurrent API threads never interleave half-writes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from agent_vault.store.migrations import migrate


def _touch_private(path: Path) -> None:
    """Create the DB file 0600 before SQLite does (never written then chmod-ed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def make_engine(url: str) -> Engine:
    """A SQLite engine with WAL, foreign keys and a 5 s busy timeout. Errors never echo parameters."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
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


class Store:
    """The open database: an engine, migrated, plus the single-writer lock."""

    def __init__(self, url: str) -> None:
        """Open and migrate to head. Raises SchemaTooNew for a database written by a newer version."""
        self.engine = make_engine(url)
        try:
            self.schema_version = migrate(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._lock = threading.RLock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction under the writer lock; commits on success, rolls back on any error."""
        with self._lock, Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
