"""Audit retention (SPEC §12): delete the oldest prefix of the chain, leaving one `audit.prune`
record that names the last deleted seq and hash, so `logs verify` still checks the rest."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from agent_vault.audit.chain import utc_ts
from agent_vault.audit.linking import write_head
from agent_vault.audit.query import tail
from agent_vault.audit.writer import AuditWriter, _prune_in


def prune(
    engine: Engine,
    older_than: datetime,
    *,
    writer: AuditWriter | None = None,
    head_path: Path | None = None,
    actor: str = "server",
) -> int:
    """Retention: delete the oldest records with ts < older_than (stopping at the first newer one, so
    only a prefix of the chain goes) and append one `audit.prune` record naming the last deleted seq
    and hash, in ONE transaction; returns how many were deleted (0: nothing deleted, nothing appended).

    Pass the running `writer` (it does the work on its thread, so the chain keeps one writer); without
    one the DB is changed directly and `head_path`, if given, is rewritten. Blocking: not on the loop.
    """
    if writer is not None:
        return writer.prune(older_than, actor=actor)
    with engine.begin() as conn:
        rec = _prune_in(conn, utc_ts(older_than), actor, tail(conn))
    if rec is None:
        return 0
    if head_path is not None:
        write_head(head_path, rec["seq"], rec["hash"])
    return int(rec["details"]["deleted"])
