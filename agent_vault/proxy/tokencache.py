"""An in-memory cache of brokered credentials (OAuth2 access tokens, STS keys) with one in-flight
fetch per key, refreshed ahead of expiry.

`get(key, fetch)` returns the cached value while it is fresh; once it is stale (past `refresh_at`)
but not expired it still returns it and starts ONE background refresh; a miss or an expired entry
waits for the one shared fetch (40 concurrent cold-start requests cause one token request). A failed
fetch is not cached: every waiter gets its error and the next request tries again. Waiters are
shielded: a client that goes away does not cancel the fetch the others wait for. A failed fetch is
logged as one warning naming its `context` (e.g. the vault), the service, the endpoint's host and the
cause code (never a body or a token), at most once a minute per identical line (`limited`).

Keys are digests that include every input value (so a rotated client secret is a new key); values
are secrets: never logged, never in a repr. Bounded: past `max_entries` the oldest entries go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent_vault.errors import AgentVaultError

log = logging.getLogger("agent_vault.proxy")
#: Refresh this long before expiry at most, and a quarter of the lifetime at least.
REFRESH_AHEAD_MAX = 300.0
#: Stop serving a value this long before the issuer's expiry (clock skew, time in flight).
EXPIRY_SKEW_MAX = 30.0
#: Identical warnings (a failing endpoint or source hit by every request) are logged once per this long.
LOG_EVERY = 60.0


class RateLimitedLog:
    """Warnings logged at most once per `every` seconds per identity (a tuple of what the line names),
    so a loop of failing requests cannot flood server.log. Bounded: past `max_keys` it forgets."""

    def __init__(self, every: float = LOG_EVERY, max_keys: int = 4096) -> None:
        self.every = every
        self.max_keys = max_keys
        self._last: dict[tuple[object, ...], float] = {}

    def warning(self, ident: tuple[object, ...], msg: str, *args: object) -> bool:
        """Log `msg % args` unless the same `ident` was logged less than `every` seconds ago."""
        now = time.monotonic()
        last = self._last.get(ident)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[ident] = now
        log.warning(msg, *args)
        return True


#: The proxy's rate-limited warnings (credential fetches, credential sources).
limited = RateLimitedLog()


def log_fetch_failure(context: str, exc: BaseException) -> None:
    """One warning for a failed brokered fetch: `context` (who asked: "vault NAME"), then the service,
    the endpoint host and the cause code a CredentialUnavailable carries; anything else by class."""
    extra = exc.extra if isinstance(exc, AgentVaultError) else {}
    service, host = extra.get("service", "?"), extra.get("endpoint", "?")
    cause = extra.get("cause") or (exc.code if isinstance(exc, AgentVaultError) else type(exc).__name__)
    where = f"{context}, " if context else ""
    limited.warning(
        ("fetch", context, service, host, cause),
        "brokered credential fetch failed: %sservice %s, endpoint %s: %s",
        where,
        service,
        host,
        cause,
    )


@dataclass(slots=True)
class Entry[T]:
    value: T = field(repr=False)
    refresh_at: float
    expires_at: float


def entry[T](value: T, lifetime: float, now: float | None = None) -> Entry[T]:
    """An entry for a value valid `lifetime` seconds from `now` (monotonic)."""
    now = time.monotonic() if now is None else now
    lifetime = max(1.0, lifetime)
    return Entry(
        value,
        refresh_at=now + lifetime - min(REFRESH_AHEAD_MAX, lifetime / 4),
        expires_at=now + lifetime - min(EXPIRY_SKEW_MAX, lifetime / 10),
    )


class TokenCache[T]:
    """Single-flight cache; `fetch` returns `(value, lifetime_seconds)`."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, Entry[T]] = {}
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self.fetches = 0  # fetches started (tests, metrics)

    def __repr__(self) -> str:
        return f"TokenCache(entries={len(self._entries)}, inflight={len(self._inflight)})"

    def _start(
        self, key: str, fetch: Callable[[], Awaitable[tuple[T, float]]], context: str
    ) -> asyncio.Future[T]:
        fut = self._inflight.get(key)
        if fut is not None:
            return fut

        async def run() -> T:
            try:
                try:
                    value, lifetime = await fetch()
                except Exception as e:
                    log_fetch_failure(context, e)
                    raise
                if len(self._entries) >= self.max_entries and key not in self._entries:
                    for old in list(self._entries)[: max(1, self.max_entries // 8)]:
                        del self._entries[old]
                self._entries[key] = entry(value, lifetime)
                return value
            finally:
                self._inflight.pop(key, None)

        self.fetches += 1
        fut = self._inflight[key] = asyncio.ensure_future(run())
        fut.add_done_callback(_retrieve)
        return fut

    async def get(self, key: str, fetch: Callable[[], Awaitable[tuple[T, float]]], *, context: str = "") -> T:
        """The value for `key`; `context` names who asked in the warning a failed fetch logs."""
        now = time.monotonic()
        e = self._entries.get(key)
        if e is not None and now < e.refresh_at:
            return e.value
        fut = self._start(key, fetch, context)
        if e is not None and now < e.expires_at:
            return e.value  # stale but valid: the refresh runs in the background
        return await asyncio.shield(fut)

    def peek(self, key: str) -> T | None:
        """The cached value for `key` if it has not expired (no fetch)."""
        e = self._entries.get(key)
        return e.value if e is not None and time.monotonic() < e.expires_at else None

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Consume a fetch's error (a background refresh nobody awaits); `run` logged it."""
    if not fut.cancelled():
        fut.exception()
