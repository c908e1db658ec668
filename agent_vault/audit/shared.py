"""One audit chain written by several replicas (PostgreSQL): appends serialized by an advisory lock.

On a shared database a writer cannot trust its own memory of the chain's tail: another replica may have
appended since. So every append transaction first takes `pg_advisory_xact_lock(AUDIT_LOCK)` (held until
it commits or rolls back), reads the tail `(seq, hash)` FROM THE DATABASE under that lock, links the batch
after it and inserts it. Appends from all replicas thus form one gap-free chain that `logs verify`
checks from any replica. The SQLite path (one process) keeps its in-memory tail (writer.py).

A writer never links below what it knows was committed: if the database's tail is behind the last record
this writer committed (or behind its `audit.head` at start), the tail was cut and the batch continues
after the writer's own tail, so `verify` reports the loss as a gap instead of it being papered over.

A commit whose outcome is unknown (the connection dropped during COMMIT) is resolved on the retry, under
the lock: if the batch's last row is there (same seq and hash), it was committed and is not appended
twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text
from sqlmodel import col

from agent_vault.audit.query import tail
from agent_vault.models import AuditEvent

logger = logging.getLogger(__name__)

# A fixed 64-bit key for the audit chain's lock (distinct from the store's writer lock key).
AUDIT_LOCK = 0x4156_4155_4449_5431  # "AVAUDIT1"
_MAX_BACKOFF = 5.0

Linker = Callable[[int, str], tuple[list[dict[str, Any]], int]]  # (seq, hash) -> (rows, replaced)


def shared(engine: Engine) -> bool:
    """True where several processes may append to one chain (PostgreSQL)."""
    return engine.dialect.name == "postgresql"


def locked_tail(conn: Connection) -> tuple[int, str]:
    """Take the chain's lock for this transaction, then read its tail from the database."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK})
    return tail(conn)


def _present(conn: Connection, row: dict[str, Any]) -> bool:
    stmt = select(col(AuditEvent.seq)).where(
        col(AuditEvent.seq) == row["seq"], col(AuditEvent.hash) == row["hash"]
    )
    return conn.execute(stmt).first() is not None


def append(engine: Engine, link: Linker, abandon: threading.Event) -> tuple[list[dict[str, Any]], int] | None:
    """Link (with `link`, after the tail read under the lock) and insert one batch; retry with backoff
    until it is committed. Returns (the committed rows, records replaced by the marker over every pass),
    or None when `abandon` is set first (shutdown)."""
    delay, replaced = 0.05, 0
    tried: list[dict[str, Any]] = []  # the rows of an attempt whose commit may have succeeded
    while True:
        try:
            with engine.begin() as conn:
                seq, prev = locked_tail(conn)
                if tried and seq == tried[-1]["seq"] and _present(conn, tried[-1]):
                    return tried, replaced  # the earlier attempt did commit
                rows, n = link(seq, prev)
                replaced += n
                tried = rows
                conn.execute(insert(AuditEvent), rows)
            return rows, replaced
        except Exception as exc:  # any DB failure: keep the batch, log without contents, retry
            logger.error("audit append of a batch failed (%s); retrying", type(exc).__name__)
        if abandon.wait(delay):
            return None
        delay = min(delay * 2, _MAX_BACKOFF)
