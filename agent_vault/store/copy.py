"""Copy one instance's database into another, row for row (`agent-vault migrate-db`).

Values stay sealed: ciphertexts, the wrapped DEK and the CA key are copied as bytes, never decrypted
(nothing here holds a key). Ids, audit `seq` and hashes are kept, so the audit chain verifies on the
target. The target must be empty (migrated, no rows); everything is written in ONE target transaction,
so a failure leaves it empty. On PostgreSQL the identity sequences are then moved past the copied ids.
Source and target are both migrated to head first (same schema on both sides).
"""

from __future__ import annotations

from sqlalchemy import Connection, Table, func, select, text
from sqlmodel import SQLModel

from agent_vault import models  # noqa: F401  (registers every table in SQLModel.metadata)
from agent_vault.errors import Conflict
from agent_vault.store.engine import Store

BATCH = 500  # rows per INSERT: bounded memory for a large audit log
# Bookkeeping the migrations create WITH its one row (the replicas' change counter, migration 6): the
# target keeps its own row; it is neither a sign of a non-empty target nor copied.
SEEDED = frozenset({"changes"})


def tables() -> list[Table]:
    """Every table with instance data, parents before children (foreign keys)."""
    return [t for t in SQLModel.metadata.sorted_tables if t.name not in SEEDED]


def first_nonempty(store: Store) -> str | None:
    """The name of a table that has rows, or None for an empty database."""
    with store.engine.connect() as conn:
        for t in tables():
            if conn.execute(select(func.count()).select_from(t)).scalar():
                return t.name
    return None


def _reset_sequences(conn: Connection) -> None:
    """PostgreSQL identity columns: the next id follows the largest copied one."""
    for t in tables():
        for c in t.primary_key.columns:
            args = {"t": t.name, "c": c.name}
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), args).scalar()
            if seq is None:
                continue
            top = conn.execute(select(func.max(c))).scalar()
            conn.execute(
                text("SELECT setval(CAST(:s AS regclass), :v, :called)"),
                {"s": seq, "v": int(top) if top is not None else 1, "called": top is not None},
            )


def copy_all(source: Store, target: Store) -> dict[str, int]:
    """Copy every row of `source` into the empty `target` in one transaction; returns rows per table.

    Raises Conflict (before writing) when the target has rows."""
    busy = first_nonempty(target)
    if busy is not None:
        raise Conflict(
            f"the target database is not empty (table {busy} has rows)",
            hint="migrate-db only fills a new, empty database.",
        )
    counts: dict[str, int] = {}
    with source.engine.connect() as src, target.engine.begin() as dst:
        for t in tables():
            n = 0
            order = list(t.primary_key.columns)
            result = src.execution_options(yield_per=BATCH).execute(select(t).order_by(*order))
            for chunk in result.partitions(BATCH):
                dst.execute(t.insert(), [dict(row._mapping) for row in chunk])
                n += len(chunk)
            counts[t.name] = n
        if target.dialect == "postgresql":
            _reset_sequences(dst)
    return counts
