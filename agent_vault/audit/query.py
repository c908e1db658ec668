"""Reading the audit log: filtered listings, the chain tail, `audit.head`, and `verify_db`.

Works on any SQLAlchemy `Engine` holding the `audit_events` table; only portable SQL (the `service`
filter is applied in Python because it lives inside the record JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Select, case, func, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from agent_vault.audit.chain import GENESIS, PROXY_KINDS, Row, VerifyResult, utc_ts, verify_chain
from agent_vault.models import AuditEvent

_seq_c, _ts_c, _kind_c = col(AuditEvent.seq), col(AuditEvent.ts), col(AuditEvent.kind)
_actor_c, _vault_c, _status_c = col(AuditEvent.actor), col(AuditEvent.vault), col(AuditEvent.status)
_decision_c, _host_c = col(AuditEvent.decision), col(AuditEvent.host)
_record_c, _hash_c = col(AuditEvent.record), col(AuditEvent.hash)
_SCAN_CHUNK = 1000


def read_head(path: Path) -> dict[str, Any] | None:
    """The parsed `audit.head`, None when the file does not exist, {} when it is unreadable or malformed
    (which `verify_chain` reports as truncation)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def tail(conn: Connection | Engine) -> tuple[int, str]:
    """(seq, hash) of the newest stored record, or (0, GENESIS) for an empty table."""
    stmt = select(_seq_c, _hash_c).order_by(_seq_c.desc()).limit(1)
    if isinstance(conn, Engine):
        with conn.connect() as c:
            row = c.execute(stmt).first()
    else:
        row = conn.execute(stmt).first()
    return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)


def latest_seq(engine: Engine) -> int:
    """The newest seq, 0 when the log is empty."""
    with engine.connect() as conn:
        value = conn.execute(select(func.max(_seq_c))).scalar()
    return int(value) if value is not None else 0


def window_start_stmt(cutoff: str) -> Select[Any]:
    """The first seq recorded at or after `cutoff` (an index-only range of the `ts` index). `seq + 0`:
    a bare min(seq) lets SQLite walk the table from its oldest row until one is in the window."""
    return select(func.min(_seq_c + 0)).where(_ts_c >= cutoff)


def window_counts_stmt(vault: str, first_seq: int, cutoff: str) -> Select[Any]:
    """(requests, denied, errors) of `vault`'s proxied records from `first_seq` on, at or after `cutoff`.
    `vault = ? AND seq >= ?` is one range of the `vault` index (its entries are in seq order within a
    vault); `ts` is checked again because records are not strictly in ts order."""
    failed = (_decision_c == "error") | (_status_c >= 500)
    return select(
        func.count(),
        func.coalesce(func.sum(case((_decision_c == "denied", 1), else_=0)), 0),
        func.coalesce(func.sum(case((failed, 1), else_=0)), 0),
    ).where(_vault_c == vault, _seq_c >= first_seq, _ts_c >= cutoff, _kind_c.in_(sorted(PROXY_KINDS)))


def proxy_counts(engine: Engine, vault: str, since: datetime) -> dict[str, int]:
    """Proxied requests of `vault` recorded at or after `since`: {requests, denied, errors} where errors
    are upstream or proxy failures (decision `error`) and upstream answers with status >= 500.

    Cost follows the records of the window, never the history (two index ranges, see above)."""
    cutoff = utc_ts(since)
    with engine.connect() as conn:
        first = conn.execute(window_start_stmt(cutoff)).scalar()
        if first is None:
            return {"requests": 0, "denied": 0, "errors": 0}
        row = conn.execute(window_counts_stmt(vault, int(first), cutoff)).one()
    return {"requests": int(row[0]), "denied": int(row[1]), "errors": int(row[2])}


def _status_filter(status_class: str) -> ColumnElement[bool]:
    """ "4xx" (any of 1xx…5xx), an exact code such as "404", or "err" (decision `error`)."""
    if status_class == "err":
        return _decision_c == "error"
    if len(status_class) == 3 and status_class[0] in "12345" and status_class[1:] == "xx":
        base = int(status_class[0]) * 100
        return (_status_c >= base) & (_status_c < base + 100)
    if len(status_class) == 3 and status_class.isdigit():
        return _status_c == int(status_class)
    raise ValueError(f"status filter must look like 4xx, 404 or err, not {status_class!r}")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_records(
    engine: Engine,
    *,
    vault: str | None = None,
    kind: str | None = None,
    agent: str | None = None,
    service: str | None = None,
    decision: str | None = None,
    status_class: str | None = None,
    host: str | None = None,
    since: datetime | None = None,
    after_seq: int | None = None,
    before_seq: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Parsed records (each with its "hash" added), always returned in ascending seq order.

    Paging: with `after_seq`, the OLDEST `limit` matches with seq > after_seq (tail/follow: pass the
    last seq seen); otherwise the NEWEST `limit` matches (with seq < before_seq when given: page back
    by passing the first seq seen). Both bounds together select the oldest matches between them.
    Filters (all exact, combined with AND): `kind` ("credential.*" selects a family), `agent` (actor
    `agent:<name>` or a session of it, `session:<id>:agent:<name>`), `status_class` ("4xx", "404" or
    "err"), `since` (ts >= since; naive = UTC), `service` (matched in the record JSON).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    conds: list[ColumnElement[bool]] = []
    if vault is not None:
        conds.append(_vault_c == vault)
    if kind is not None:
        family = kind.endswith(".*")
        conds.append(_kind_c.like(_like_escape(kind[:-1]) + "%", escape="\\") if family else _kind_c == kind)
    if agent is not None:
        pattern = "%:agent:" + _like_escape(agent)
        conds.append(or_(_actor_c == f"agent:{agent}", _actor_c.like(pattern, escape="\\")))
    if decision is not None:
        conds.append(_decision_c == decision)
    if status_class is not None:
        conds.append(_status_filter(status_class))
    if host is not None:
        conds.append(_host_c == host)
    if since is not None:
        conds.append(_ts_c >= utc_ts(since))
    ascending = after_seq is not None
    if after_seq is not None:
        conds.append(_seq_c > after_seq)
    if before_seq is not None:
        conds.append(_seq_c < before_seq)
    chunk = limit if service is None else max(limit, _SCAN_CHUNK)
    out: list[dict[str, Any]] = []
    cursor: int | None = None
    with engine.connect() as conn:
        while len(out) < limit:
            stmt = select(_seq_c, _record_c, _hash_c).where(*conds)
            if cursor is not None:
                stmt = stmt.where(_seq_c > cursor if ascending else _seq_c < cursor)
            stmt = stmt.order_by(_seq_c if ascending else _seq_c.desc()).limit(chunk)
            rows = conn.execute(stmt).all()
            for _, text, digest in rows:
                rec: dict[str, Any] = json.loads(text)
                if service is not None and rec.get("service") != service:
                    continue
                rec["hash"] = digest
                out.append(rec)
                if len(out) == limit:
                    break
            if len(rows) < chunk:
                break
            cursor = int(rows[-1][0])
    if not ascending:
        out.reverse()
    return out


def verify_db(engine: Engine, head_path: Path, expect_head: str | None = None) -> VerifyResult:
    """Verify the whole stored chain (streamed in seq order) against `audit.head` and `expect_head`.

    The head file is read BEFORE the rows, so a writer committing meanwhile can only make the head lag
    behind what is read (accepted), never lead it (which would be a false truncation).
    """
    head = read_head(head_path)
    stmt = select(
        _seq_c, _record_c, _hash_c, _ts_c, _kind_c, _actor_c, _vault_c, _decision_c, _host_c, _status_c
    ).order_by(_seq_c)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(stmt)
        rows: Iterator[Row] = ((r[0], r[1], r[2], (r[3], r[4], r[5], r[6], r[7], r[8], r[9])) for r in result)
        return verify_chain(rows, head, expect_head)
