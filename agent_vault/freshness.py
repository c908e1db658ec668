"""Replica freshness: keep this process's snapshot in step with a database other replicas write to.

One daemon thread per replica owns one dedicated PostgreSQL connection (`LISTEN agent_vault_changes`).
It wakes on every notification (a committed change anywhere, store/changes.py) and at least every
`interval` seconds (the safety net: a lost notification, a listener reconnect), reads the change
counter, and reloads the runtime when the database is ahead of the snapshot: identities only, or
everything when vaults/services/credentials changed. Notifications arriving together are coalesced
into one check (`debounce`), and a replica's own changes cost no second reload (the counter already
matches what its synchronous reload recorded, and its own notifications are skipped).

Fail closed: `confirmed_at` is when the database last confirmed the snapshot current. A replica whose
snapshot has not been confirmed for longer than `bound` seconds refuses new proxy connections and
requests with 503 `store_unavailable` (`require()`), because it might be serving a revoked grant; within
the bound it keeps serving from its snapshot (a PostgreSQL restart is ridden out). `/ready` reports
`degraded` while the listener is disconnected or the bound is crossed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent_vault.errors import AgentVaultError
from agent_vault.runtime import Runtime
from agent_vault.store.changes import CHANNEL

log = logging.getLogger("agent_vault.freshness")

DEFAULT_BOUND = 30.0
_MAX_BACKOFF = 2.0


class StoreUnavailable(AgentVaultError):
    """This replica cannot confirm that its snapshot of the shared database is current."""

    code = "store_unavailable"
    status = 503
    hint = "The shared database is unreachable from this replica; retry shortly (or through another replica)."


class _Notifying(Protocol):
    """The part of a psycopg 3 connection the watcher uses."""

    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def notifies(self, *, timeout: float | None = ..., stop_after: int | None = ...) -> Any: ...
    def close(self) -> None: ...


class Freshness:
    """The watcher thread and the freshness verdict. `connect` returns a NEW autocommit connection."""

    def __init__(
        self,
        runtime: Runtime,
        connect: Callable[[], _Notifying],
        *,
        bound: float = DEFAULT_BOUND,
        interval: float = 1.0,
        debounce: float = 0.05,
        on_full_reload: Callable[[], object] | None = None,
        origin: str = "",
    ) -> None:
        self.runtime, self._connect = runtime, connect
        self._on_full_reload = on_full_reload  # e.g. adopt a CA another replica rotated
        self.origin = origin  # our store's NOTIFY payload (changes.origin_of): skipped
        self.bound, self.interval, self.debounce = bound, interval, debounce
        self.confirmed_at = time.monotonic()  # the server reloaded just before starting the watcher
        self.connected = False
        self.reloads = 0  # reloads caused by other replicas' changes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: _Notifying | None = None

    # ---- verdict (any thread; cheap: the proxy calls it per connection and per request) -------------
    def age(self) -> float:
        """Seconds since the database last confirmed the snapshot."""
        return time.monotonic() - self.confirmed_at

    def fresh(self) -> bool:
        return self.age() <= self.bound

    def require(self) -> None:
        """Raise StoreUnavailable (503) when the snapshot is unconfirmed for longer than the bound."""
        if time.monotonic() - self.confirmed_at > self.bound:
            raise StoreUnavailable(
                f"this replica has not reached the shared database for over {self.bound:g} s"
            )

    def problem(self) -> str | None:
        """Why `/ready` should say degraded, or None."""
        if not self.fresh():
            return (
                f"store unreachable for {self.age():.0f} s (bound {self.bound:g} s): refusing proxy traffic"
            )
        if not self.connected:
            return "store unreachable: serving from the last snapshot"
        return None

    # ---- the watcher thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agent-vault-freshness", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                self._conn.execute(f"LISTEN {CHANNEL}")
                self._check()
                if not self.connected:
                    log.info("replica freshness: listening for changes")
                self.connected, delay = True, 0.1
                while not self._stop.is_set():
                    self._wait()
                    self._check()
            except Exception as exc:  # the database is away: retry; require() enforces the bound
                if self.connected or delay == 0.1:
                    log.warning("replica freshness: store unreachable (%s); retrying", type(exc).__name__)
                self.connected = False
            finally:
                self._close()
            self._stop.wait(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    def _wait(self) -> None:
        """Until another replica's notification arrives (then a short pause to coalesce a burst) or
        `interval` passes. This replica's own notifications are skipped: it reloaded when it wrote."""
        assert self._conn is not None
        deadline = time.monotonic() + self.interval
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            got = list(self._conn.notifies(timeout=min(left, 1.0), stop_after=1))  # stop() within 1 s
            if any(getattr(n, "payload", "") != self.origin for n in got):
                for _ in self._conn.notifies(timeout=self.debounce):
                    pass
                return

    def _check(self) -> None:
        """Read the counter; reload what is behind; then mark the snapshot confirmed as of the read."""
        assert self._conn is not None
        asked = time.monotonic()
        row = self._conn.execute("SELECT version, vaults_version FROM changes WHERE id = 1").fetchone()
        db = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        seen = self.runtime.seen
        if db[1] != seen[1]:
            self.runtime.reload()
            self.reloads += 1
            if self._on_full_reload is not None:
                self._on_full_reload()
        elif db[0] != seen[0]:
            self.runtime.reload(vaults=False)
            self.reloads += 1
        self.confirmed_at = asked

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # a dead connection may fail to close; it is dropped either way
                log.debug("replica freshness: close failed (%s)", type(exc).__name__)
