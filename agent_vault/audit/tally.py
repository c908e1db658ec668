"""Anonymous refusals of one cause in one window, summarised into one `proxy.refused` record
(SPEC §12 deviation, README): a client without a token cannot grow the audit log one row per attempt.
Samples are bounded: a few client addresses and hosts, a few method counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_vault.audit.chain import refusal_summary

SAMPLES = 5  # distinct client addresses and hosts kept per summary
METHODS = 8  # distinct methods counted per summary (the rest as "other")


@dataclass
class Tally:
    """Anonymous refusals of one cause in the current window (bounded samples)."""

    opened: float  # time.monotonic() of the first refusal
    first: float  # time.time() of the first and the last refusal
    last: float
    count: int = 0
    clients: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)

    def add(self, now: float, method: str, host: str | None, client: str | None) -> None:
        self.count += 1
        self.last = now
        if client and len(self.clients) < SAMPLES and client not in self.clients:
            self.clients.append(client)
        if host and len(self.hosts) < SAMPLES and host not in self.hosts:
            self.hosts.append(host)
        if method not in self.methods and len(self.methods) >= METHODS:
            method = "other"
        self.methods[method] = self.methods.get(method, 0) + 1

    def summary(self, key: tuple[str, int | None, str | None], window_s: float) -> dict[str, Any]:
        """The `proxy.refused` record for cause `key` = (decision, status, error)."""
        decision, status, error = key
        return refusal_summary(
            decision=decision,
            status=status,
            error=error,
            count=self.count,
            first=datetime.fromtimestamp(self.first, UTC),
            last=datetime.fromtimestamp(self.last, UTC),
            window_s=window_s,
            clients=self.clients,
            hosts=self.hosts,
            methods=self.methods,
        )
