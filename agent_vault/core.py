"""The unlocked instance: store + DEK + runtime view + audit writer, shared by the API and the proxy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent_vault.audit import AuditWriter, admin_record
from agent_vault.config import Settings
from agent_vault.freshness import Freshness
from agent_vault.holds import HoldManager
from agent_vault.home import Home
from agent_vault.keys import CA
from agent_vault.lastused import LastUsed
from agent_vault.metrics import Metrics
from agent_vault.notify import Notifier
from agent_vault.quota import QuotaCounter
from agent_vault.ratelimit import FailureLimiter, TokenBucket
from agent_vault.runtime import Runtime
from agent_vault.store import Store
from agent_vault.usage import UsageMeter

log = logging.getLogger("agent_vault")


@dataclass
class Services:
    """Process-wide helpers the server makes once at start (typed, instead of a string-keyed bag).
    Each is None where the process does not run it (tests, `--disable-proxy`)."""

    metrics: Metrics | None = None
    resolve: dict[str, str] = field(default_factory=dict)  # AGENT_VAULT_RESOLVE host -> address
    stop: asyncio.Event | None = None  # set to shut the server down
    api_limiter: TokenBucket | None = None  # control-API limiter (made on first use; None for `off`)
    api_limiter_made: bool = False
    login_limiter: FailureLimiter | None = None
    proposal_gauge_vaults: set[str] = field(default_factory=set)  # label sets of the pending gauge
    holds: HoldManager | None = None  # approval holds (issue 19); None: no proxy in this process
    # the proxy's open client connections bound to a token id (loop thread only); None: no proxy
    open_connections: Callable[[int], int] | None = None
    notifier: Notifier | None = None  # webhooks (issue 19); None: no --notify-url
    # CA rotation, proxy side: prepares the engine for a new CA (may raise; changes nothing) and returns
    # the call that switches new TLS connections to it (cannot fail). None without a proxy.
    ca_engine: Callable[[CA], Callable[[], None]] | None = None
    quotas: QuotaCounter = field(default_factory=QuotaCounter)  # per-service request quotas (proxy)
    usage: UsageMeter = field(default_factory=UsageMeter)  # LLM token usage (persisted by the server)
    freshness: Freshness | None = None  # replicas on PostgreSQL: snapshot freshness (None on SQLite)
    last_used: LastUsed = field(default_factory=LastUsed)  # agents' last use (written by housekeeping)


@dataclass
class Core:
    """Everything a request handler needs. Danger: holds the DEK; never log or repr it."""

    settings: Settings
    home: Home
    store: Store
    instance_id: str
    key_mode: str
    dek: bytes = field(repr=False)
    ca: CA
    runtime: Runtime
    audit: AuditWriter
    proxy_port: int | None = None
    api_url: str = ""
    proxy_ready: bool = False
    services: Services = field(default_factory=Services)

    def record(
        self,
        kind: str,
        actor: str,
        vault: str | None = None,
        target: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one admin audit record (names only; never values, tokens or passwords)."""
        if not self.audit.submit(admin_record(kind, actor, vault=vault, target=target, details=details)):
            log.warning("audit queue full: %s record counted as dropped", kind)

    def notify(self, event: str, vault: str | None, data: dict[str, Any]) -> None:
        """Queue a webhook event (names, ids, links; never values or tokens). Never blocks."""
        if self.services.notifier is not None:
            self.services.notifier.emit(event, vault, data)

    @property
    def public_url(self) -> str:
        return (self.settings.public_url or self.api_url).rstrip("/")
