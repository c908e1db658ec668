"""Approval holds (issue 19): a request to a service flagged `approval_required` waits, on the proxy's
event loop, until a human approves it (once, for an hour, or always), denies it, or its time runs out.

`HoldManager` is shared by the proxy (which awaits `gate`) and the API (which lists and decides from
its worker threads). Contracts and dangers:
* Waiting never blocks the loop: a hold is an `asyncio.Future` awaited with the service's timeout.
  Decisions from other threads resolve it with `call_soon_threadsafe`.
* Bounded: at most `per_actor` pending holds per agent and `total` in all (`too_many_holds`), so an
  agent cannot pile up memory. A held client that disconnects cancels its holds.
* A hold shows method, host, path (no query) and agent, never bodies, headers or values.
* Holds survive nothing: `shutdown()` answers every pending one with 503 `hold_interrupted`; "1h"
  approvals live in memory only.
* Every decision is audited through `record` (names and ids only).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_vault.errors import ApprovalDenied, ApprovalTimeout, HoldInterrupted, NotFound, TooManyHolds
from agent_vault.servicedef import ServiceDef

Record = Callable[..., None]
Notify = Callable[[str, dict[str, Any]], None]
HOUR = 3600.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Hold:
    id: str
    vault: str
    agent: str  # the owner label: agent:NAME or user:EMAIL (a session acts for its creator)
    actor: str  # the token's audit label (session:ID:agent:NAME, agent:NAME)
    service: str
    method: str
    host: str
    port: int
    path: str  # without query
    created_at: datetime
    expires_at: datetime
    client_id: str
    future: asyncio.Future[str] = field(repr=False)
    status: str = "pending"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vault": self.vault,
            "agent": self.agent,
            "service": self.service,
            "method": self.method,
            "host": self.host,
            "port": self.port,
            "path": self.path,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "status": self.status,
        }


class HoldManager:
    """Pending holds of one server process (see the module docstring)."""

    def __init__(
        self,
        record: Record,
        notify: Notify | None = None,
        *,
        per_actor: int = 32,
        total: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.record, self.notify = record, notify
        self.per_actor, self.total, self.clock = per_actor, total, clock
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}
        self._hourly: dict[tuple[str, str, str], float] = {}  # (vault, agent, service) -> until
        self._closed = False

    # ---- the proxy side (event loop) ------------------------------------------------------------
    def needs_hold(self, vault: str, svc: ServiceDef, method: str, agent: str) -> bool:
        spec = svc.approval
        if spec is None or not spec.applies(method, agent):
            return False
        with self._lock:
            until = self._hourly.get((vault, agent, svc.name))
        return until is None or until <= self.clock()

    async def gate(
        self,
        *,
        vault: str,
        svc: ServiceDef,
        agent: str,
        actor: str,
        method: str,
        host: str,
        port: int,
        path: str,
        client_id: str,
    ) -> Hold | None:
        """Return at once when no hold is needed (None) or once approved (the hold); raise the SPEC
        §6 error for denied (403), timed out (403), interrupted (503) or over the bounds (429)."""
        if not self.needs_hold(vault, svc, method, agent):
            return None
        assert svc.approval is not None
        timeout = svc.approval.timeout_seconds
        loop = asyncio.get_running_loop()
        now = datetime.now(UTC)
        hold = Hold(
            secrets.token_hex(4),
            vault,
            agent,
            actor,
            svc.name,
            method,
            host,
            port,
            path.split("?", 1)[0],
            now,
            now + timedelta(seconds=timeout),
            client_id,
            loop.create_future(),
        )
        with self._lock:
            if self._closed:
                raise HoldInterrupted("the server is stopping; the request was not forwarded")
            mine = sum(1 for h in self._holds.values() if h.agent == agent)
            if mine >= self.per_actor or len(self._holds) >= self.total:
                raise TooManyHolds(
                    f"too many requests are already waiting for approval (at most {self.per_actor} "
                    f"per agent, {self.total} in all)"
                )
            self._holds[hold.id] = hold
        self.record("hold.create", actor, vault=vault, target=hold.id, details=self._details(hold))
        self._notify("hold.created", hold)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(hold.future), timeout)
        except TimeoutError:
            outcome = "timeout"
        finally:
            with self._lock:
                self._holds.pop(hold.id, None)
        if outcome == "approved":
            return hold
        if outcome == "timeout":
            hold.status = "timeout"
            self.record("hold.timeout", "server", vault=vault, target=hold.id, details=self._details(hold))
            self._notify("hold.decided", hold)
            raise ApprovalTimeout(
                f"no one approved {method} {host}{hold.path} (service {svc.name}) within {timeout} s"
            )
        if outcome == "denied":
            raise ApprovalDenied(f"a human denied {method} {host}{hold.path} (service {svc.name})")
        if outcome == "cancelled":
            raise HoldInterrupted("the client went away while the request was held")
        raise HoldInterrupted("the server stopped while the request was held; it was not forwarded")

    def cancel_client(self, client_id: str) -> None:
        """The held connection closed: its pending holds end, `hold.decided` with status "cancelled"
        tells the webhook that nobody needs to decide any more (loop thread)."""
        with self._lock:
            gone = [h for h in self._holds.values() if h.client_id == client_id and h.status == "pending"]
            for h in gone:
                h.status = "cancelled"
        for h in gone:
            if not h.future.done():
                h.future.set_result("cancelled")
            self.record("hold.cancel", "server", vault=h.vault, target=h.id, details=self._details(h))
            self._notify("hold.decided", h)

    def shutdown(self) -> int:
        """Answer every pending hold with 503 (loop thread), each a `hold.decided` with status
        "interrupted"; returns how many there were."""
        with self._lock:
            self._closed = True
            pending = list(self._holds.values())
            ending = [h for h in pending if h.status == "pending"]
            for h in ending:
                h.status = "interrupted"
        for h in pending:
            if not h.future.done():
                h.future.set_result("shutdown")
        for h in ending:
            self._notify("hold.decided", h)
        return len(pending)

    # ---- the API side (any thread) ----------------------------------------------------------------
    def list(self, vault: str, agent: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            holds = [h for h in self._holds.values() if h.vault == vault and h.status == "pending"]
        holds = [h for h in holds if agent is None or h.agent == agent]
        return [h.public() for h in sorted(holds, key=lambda h: h.created_at)]

    def count(self, vault: str) -> int:
        with self._lock:
            return sum(1 for h in self._holds.values() if h.vault == vault and h.status == "pending")

    def get(self, vault: str, hold_id: str) -> Hold:
        with self._lock:
            h = self._holds.get(hold_id)
        if h is None or h.vault != vault or h.status != "pending":
            raise NotFound(f"no pending hold {hold_id[:16]} in vault {vault}")
        return h

    def decide(self, vault: str, hold_id: str, *, approve: bool, scope: str, by: str) -> dict[str, Any]:
        """Resolve a pending hold (thread-safe). `scope` "1h" also lets the agent's next requests to
        the service through for an hour; "always" is applied to the service by the caller first."""
        h = self.get(vault, hold_id)
        with self._lock:
            if h.status != "pending":
                raise NotFound(f"no pending hold {hold_id[:16]} in vault {vault}")
            h.status = "approved" if approve else "denied"
            if approve and scope == "1h":
                self._hourly[(h.vault, h.agent, h.service)] = self.clock() + HOUR
        kind = "hold.approve" if approve else "hold.deny"
        details = {**self._details(h), "scope": scope if approve else None}
        self.record(kind, by, vault=vault, target=h.id, details=details)
        self._notify("hold.decided", h, decided_by=by, scope=scope if approve else None)
        outcome = "approved" if approve else "denied"
        h.future.get_loop().call_soon_threadsafe(_resolve, h.future, outcome)
        return {**h.public(), "scope": scope if approve else None}

    # ---- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _details(h: Hold) -> dict[str, Any]:
        return {
            "agent": h.agent,
            "service": h.service,
            "method": h.method,
            "host": h.host,
            "path": h.path,
        }

    def _notify(self, event: str, h: Hold, **extra: Any) -> None:
        if self.notify is not None:
            self.notify(event, {**h.public(), **extra})


def _resolve(fut: asyncio.Future[str], outcome: str) -> None:
    if not fut.done():
        fut.set_result(outcome)
