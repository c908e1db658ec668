"""The audit writer (SPEC §12): a bounded queue drained by ONE thread that owns the chain's tail.

Producers (the proxy's event loop, API worker threads) call `AuditWriter.submit`, which never blocks
and never touches the DB. The writer thread cleans every record (`clean_record`: any byte string
becomes escaped text, so no record is ever refused for its contents), links it (seq, prev_hash, hash),
commits each batch in one transaction, then rewrites `audit.head` (0600, atomic). Drops (queue full,
writer closing) are counted and written as one `audit.gap` record; a value that cannot be encoded at
all is replaced by a marker in its record (counted as dropped, the record itself is kept); a failing
commit is logged (never with record contents) and retried with backoff. On PostgreSQL several replicas
append to one chain: each batch is linked after the tail read under an advisory lock (audit/shared.py).

Anonymous refusals (`AuditWriter.tally`) are not queued one by one: the writer keeps one counter per
cause and appends one `proxy.refused` summary per cause and window (`summary_window` seconds, or
sooner on flush/close), so a client without a token cannot grow the log one row per attempt.

Danger: records are stored forever and shown to humans. NEVER put credential values, tokens,
passwords, query strings or header values in them: build them with `proxy_record`/`admin_record`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select
from sqlmodel import col

from agent_vault.audit import shared
from agent_vault.audit.chain import (
    GAP_KIND,
    GENESIS,
    PRUNE_KIND,
    SUMMARY_KIND,
    admin_record,
    proxy_record,
    utc_ts,
)
from agent_vault.audit.linking import link, write_head
from agent_vault.audit.query import read_head, tail
from agent_vault.audit.tally import Tally
from agent_vault.models import AuditEvent

logger = logging.getLogger(__name__)

# written by the writer itself, never submitted
RESERVED_KINDS = frozenset({GAP_KIND, PRUNE_KIND, SUMMARY_KIND})
_MAX_BACKOFF = 5.0
__all__ = ["AuditWriter", "admin_record", "proxy_record", "write_head"]


def _prune_in(conn: Connection, cutoff: str, actor: str, last: tuple[int, str]) -> dict[str, Any] | None:
    """Delete the oldest records up to (excluding) the first one with ts >= cutoff, and insert the
    `audit.prune` record after `last` in the same transaction. Returns that record, or None."""
    seq_col, ts_col = col(AuditEvent.seq), col(AuditEvent.ts)
    keep = conn.execute(select(func.min(seq_col)).where(ts_col >= cutoff)).scalar()
    doomed = select(seq_col, col(AuditEvent.hash)).order_by(seq_col.desc()).limit(1)
    victim = conn.execute(doomed.where(seq_col < keep) if keep is not None else doomed).first()
    if victim is None:
        return None
    cond = seq_col < keep if keep is not None else seq_col <= victim[0]
    deleted = conn.execute(delete(AuditEvent).where(cond)).rowcount
    details = {"last_deleted_seq": victim[0], "last_deleted_hash": victim[1], "deleted": deleted}
    rec = admin_record(PRUNE_KIND, actor, target=None, details={**details, "older_than": cutoff})
    row, _, _ = link(rec, last[0] + 1, last[1])
    conn.execute(insert(AuditEvent), [row])
    return rec


@dataclass
class _PruneOp:
    cutoff: str
    actor: str
    done: threading.Event = field(default_factory=threading.Event)
    deleted: int = 0
    error: Exception | None = None


class AuditWriter:
    """The single writer of the chain. Thread-safe producers; one daemon thread commits.

    Records submitted before `start()` wait in the queue. `on_commit` is called on the writer thread
    with the committed records (each with seq, prev_hash and hash) after every commit; its errors
    are logged and ignored.
    """

    def __init__(
        self,
        engine: Engine,
        head_path: Path,
        *,
        max_queue: int = 100_000,
        batch_size: int = 500,
        interval: float = 0.2,
        on_commit: Callable[[list[dict[str, Any]]], None] | None = None,
        summary_window: float = 10.0,
    ) -> None:
        self._engine, self._head_path = engine, head_path
        self._max_queue, self._batch_size, self._interval = max_queue, batch_size, interval
        self._summary_window = summary_window
        self._tallies: dict[tuple[str, int | None, str | None], Tally] = {}
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer thread waits here
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._queue: deque[dict[str, Any]] = deque()
        self._accepted = 0  # records ever queued (gap records included)
        self._processed = 0  # of those, committed (or found unserialisable and counted as dropped)
        self._dropped_pending = 0  # drops not yet covered by a queued audit.gap record
        self._dropped_total = 0
        self._dropped_recorded = 0  # drops covered by a COMMITTED audit.gap record (or marker)
        self._replaced_total = 0  # records committed with a value replaced by the UNENCODABLE marker
        self._flushers = 0
        self._stopping = False
        self._prunes: list[_PruneOp] = []
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq, self._hash = 0, GENESIS  # the committed tail; writer thread only once started
        self._shared = shared.shared(engine)  # replicas append to one chain: tail read under a lock

    @property
    def depth(self) -> int:
        """Records waiting in the queue (agent_vault_audit_queue_depth)."""
        return len(self._queue)

    @property
    def dropped_total(self) -> int:
        """Records lost (queue full, writer closing) or committed with a value replaced by the
        `UNENCODABLE` marker: agent_vault_audit_dropped_total."""
        return self._dropped_total

    @property
    def replaced_total(self) -> int:
        """Of `dropped_total`, the records committed with a marker in place of a value."""
        return self._replaced_total

    def start(self) -> None:
        """Load the chain's tail and start the writer thread (blocking DB read: call before serving).

        If `audit.head` is AHEAD of the DB (its tail was cut while we were down), the chain continues
        after the head, so the loss stays visible to `verify` as a gap instead of being papered over.
        """
        if self._thread is not None:
            raise RuntimeError("audit writer already started")
        seq, digest = tail(self._engine)
        head = read_head(self._head_path)
        h_seq, h_hash = (head or {}).get("seq"), (head or {}).get("hash")
        rewrite = True
        if head == {}:
            logger.warning("audit.head is unreadable; rewriting it from the database")
        if isinstance(h_seq, int) and isinstance(h_hash, str) and h_seq > seq:
            logger.error(
                "audit.head is at seq %d but the database ends at %d: audit tail missing", h_seq, seq
            )
            seq, digest = h_seq, h_hash
        elif isinstance(h_seq, int) and 0 < h_seq < seq and self._hash_at(h_seq) not in (None, h_hash):
            logger.error("audit record %d differs from audit.head: run 'agent-vault logs verify'", h_seq)
            rewrite = False
        self._seq, self._hash = seq, digest
        if rewrite and (head is None or (h_seq, h_hash) != (seq, digest)):
            write_head(self._head_path, seq, digest)
        self._thread = threading.Thread(target=self._run, name="agent-vault-audit", daemon=True)
        self._thread.start()

    def submit(self, record: Mapping[str, Any]) -> bool:
        """Queue a copy of `record` (ts added if missing); never blocks, never touches the DB.

        Returns False when the queue is full (or the writer is closing): the record is counted and an
        `audit.gap` record will say how many were lost. Raises ValueError without a kind or for a kind
        the writer reserves for itself (audit.gap, audit.prune).
        """
        kind = record.get("kind")
        if not isinstance(kind, str) or not kind or kind in RESERVED_KINDS:
            raise ValueError(f"cannot submit an audit record of kind {kind!r}")
        rec = dict(record)
        if "ts" not in rec:
            rec["ts"] = utc_ts()
        with self._lock:
            if self._stopping or len(self._queue) >= self._max_queue:
                self._dropped_pending += 1
                self._dropped_total += 1
                return False
            self._queue.append(rec)
            self._accepted += 1
            if len(self._queue) == self._batch_size:
                self._work.notify()
        return True

    def tally(
        self,
        *,
        decision: str,
        status: int | None,
        error: str | None,
        method: str,
        host: str | None,
        client: str | None,
    ) -> None:
        """Count one proxy refusal of a client not (yet) identified, instead of submitting its record;
        never blocks. One `proxy.refused` summary per (decision, status, error) is appended when its
        window (`summary_window` s from the first refusal) ends, or on flush/close. After close the
        refusal is counted as dropped."""
        now, wall = time.monotonic(), time.time()
        key = (decision, status, error)
        with self._lock:
            if self._stopping:
                self._dropped_pending += 1
                self._dropped_total += 1
                return
            t = self._tallies.get(key)
            if t is None:
                t = self._tallies[key] = Tally(now, wall, wall)
            t.add(wall, method, host, client)

    def _summaries_locked(self, force: bool) -> None:
        """Queue the summaries whose window ended (all with `force`). Caller holds the lock."""
        if not self._tallies:
            return
        now = time.monotonic()
        for key, t in list(self._tallies.items()):
            if not force and now - t.opened < self._summary_window:
                continue
            del self._tallies[key]
            if len(self._queue) >= self._max_queue:
                self._dropped_pending += 1
                self._dropped_total += 1
                continue
            self._queue.append(t.summary(key, self._summary_window))
            self._accepted += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Close the open summary windows, then wait until every record accepted so far is committed
        and every drop so far is recorded in a committed `audit.gap`. Raises TimeoutError, or
        RuntimeError if the writer is not running."""
        with self._lock:
            self._summaries_locked(force=True)
            target, dropped = self._accepted, self._dropped_total

            def done() -> bool:
                return self._processed >= target and self._dropped_recorded >= dropped

            if done():
                return
            if self._thread is None or not self._thread.is_alive():
                raise RuntimeError("audit writer is not running")
            self._flushers += 1
            self._work.notify()
            try:
                ok = self._done.wait_for(done, timeout)
            finally:
                self._flushers -= 1
            pending = target - self._processed
        if not ok:
            raise TimeoutError(f"audit writer: {pending} records not committed after {timeout}s")

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop and join the writer thread (blocking: not on the event loop). Records still
        uncommitted after `timeout` (the DB keeps failing) are given up and their count is logged."""
        thread = self._thread
        if thread is None:
            return
        try:
            self.flush(timeout)
        except (TimeoutError, RuntimeError) as exc:
            logger.error("audit writer close: %s", exc)
        with self._lock:
            self._stopping = True
            self._work.notify()
        thread.join(timeout)
        if thread.is_alive():
            self._abandon.set()
            thread.join(timeout)
        if self._queue:
            logger.error("audit writer closed with %d records not committed", len(self._queue))

    def prune(self, older_than: datetime, *, actor: str = "server", timeout: float = 60.0) -> int:
        """`prune()` run on the writer thread, between batches. Blocking: not on the event loop."""
        op = _PruneOp(utc_ts(older_than), actor)
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._stopping:
                raise RuntimeError("audit writer is not running")
            self._prunes.append(op)
            self._work.notify()
        if not op.done.wait(timeout):
            raise TimeoutError("audit prune did not complete")
        if op.error is not None:
            raise op.error
        return op.deleted

    # -- writer thread -------------------------------------------------------------------------

    def _hash_at(self, seq: int) -> str | None:
        stmt = select(col(AuditEvent.hash)).where(col(AuditEvent.seq) == seq)
        with self._engine.connect() as conn:
            value = conn.execute(stmt).scalar()
        return str(value) if value is not None else None

    def _run(self) -> None:
        while not self._abandon.is_set():
            with self._lock:
                q = self._queue
                urgent = self._stopping or self._prunes or (self._flushers and (q or self._dropped_pending))
                if len(q) < self._batch_size and not urgent:
                    self._work.wait(self._interval)
                self._summaries_locked(force=self._stopping)
                batch = [q.popleft() for _ in range(min(len(q), self._batch_size))]
                if self._dropped_pending and len(q) < self._max_queue:
                    q.append(admin_record(GAP_KIND, "server", details={"dropped": self._dropped_pending}))
                    self._accepted += 1
                    self._dropped_pending = 0
                prunes, self._prunes = self._prunes, []
                last_round = self._stopping and not q and not self._dropped_pending and not self._tallies
            if batch:
                self._commit(batch)
            for op in prunes:
                self._prune(op)
            if last_round:
                return

    def _link_batch(
        self, batch: list[dict[str, Any]], after: tuple[int, str] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Link every record of `batch` (cleaned in place) after `after` (default: the cached tail):
        (DB rows, how many records had a value replaced by the marker in THIS pass; a replaced record
        links cleanly on any later pass, so the passes' counts add up to the exact total)."""
        rows: list[dict[str, Any]] = []
        replaced = 0
        seq, prev = after if after is not None else (self._seq, self._hash)
        for rec in batch:
            row, prev, lost = link(rec, seq + 1, prev)
            if lost:
                replaced += 1
                logger.error(
                    "audit record of kind %r had a value JSON cannot hold; marker written", rec["kind"]
                )
            rows.append(row)
            seq += 1
        return rows, replaced

    def _commit(self, batch: list[dict[str, Any]]) -> None:
        """Commit `batch` in one transaction; on failure keep it and retry with backoff until it is
        committed (or the writer is abandoned at close)."""
        if self._shared:  # after the DB's tail, or after our own last commit if the DB was cut below it
            done = shared.append(
                self._engine,
                lambda s, h: self._link_batch(batch, (s, h) if s >= self._seq else None),
                self._abandon,
            )
            if done is None:
                logger.error("audit writer gave up %d uncommitted records at shutdown", len(batch))
                return
            self._seq, self._hash = batch[-1]["seq"], batch[-1]["hash"]
            gaps = sum(int(r["details"]["dropped"]) for r in batch if r["kind"] == GAP_KIND)
            self._committed(batch, gaps, len(batch), done[1])
            return
        rows, replaced = self._link_batch(batch)
        delay = 0.05
        while rows:
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(AuditEvent), rows)
                break
            except Exception as exc:  # any DB failure: keep the batch, log without contents, retry
                logger.error(
                    "audit commit of %d records failed (%s); retrying", len(rows), type(exc).__name__
                )
            if self._abandon.wait(delay):
                logger.error("audit writer gave up %d uncommitted records at shutdown", len(batch))
                return
            delay = min(delay * 2, _MAX_BACKOFF)
            try:
                db_seq, db_hash = tail(self._engine)
            except Exception as exc:  # still unreachable: retry the insert itself
                logger.error("audit store unreachable (%s)", type(exc).__name__)
                continue
            if (db_seq, db_hash) == (rows[-1]["seq"], rows[-1]["hash"]):
                break  # the failure came after the commit
            if db_seq > self._seq:  # someone else appended: continue the chain after their records
                logger.error("audit chain grew under the writer (seq %d > %d); relinking", db_seq, self._seq)
                self._seq, self._hash = db_seq, db_hash
                rows, again = self._link_batch(batch)
                replaced += again
        if batch:
            self._seq, self._hash = batch[-1]["seq"], batch[-1]["hash"]
        gaps = sum(int(r["details"]["dropped"]) for r in batch if r["kind"] == GAP_KIND)
        self._committed(batch, gaps, len(batch), replaced)

    def _committed(self, recs: list[dict[str, Any]], gaps: int, n: int, replaced: int) -> None:
        if recs:
            try:
                write_head(self._head_path, self._seq, self._hash)
            except OSError as exc:
                logger.error("cannot rewrite audit.head (%s)", type(exc).__name__)
        with self._lock:
            self._processed += n
            self._dropped_recorded += gaps + replaced  # a marker record is its own witness
            self._dropped_total += replaced
            self._replaced_total += replaced
            self._done.notify_all()
        if recs and self._on_commit is not None:
            try:
                self._on_commit(recs)
            except Exception as exc:  # a broken listener must not stop the audit log
                logger.error("audit on_commit callback failed (%s)", type(exc).__name__)

    def _prune(self, op: _PruneOp) -> None:
        try:
            with self._engine.begin() as conn:
                last = shared.locked_tail(conn) if self._shared else (self._seq, self._hash)
                rec = _prune_in(conn, op.cutoff, op.actor, last)
            if rec is not None:
                self._seq, self._hash = rec["seq"], rec["hash"]
                op.deleted = int(rec["details"]["deleted"])
                self._committed([rec], 0, 0, 0)
        except Exception as exc:  # reported to the caller of prune()
            logger.error("audit prune failed (%s)", type(exc).__name__)
            op.error = exc
        finally:
            op.done.set()
