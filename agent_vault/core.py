"""The unlocked instance: store + DEK + runtime view + audit writer, shared by the API and the proxy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agent_vault.audit import AuditWriter, admin_record
from agent_vault.config import Settings
from agent_vault.home import Home
from agent_vault.keys import CA
from agent_vault.runtime import Runtime
from agent_vault.store import Store

log = logging.getLogger("agent_vault")


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
    extras: dict[str, Any] = field(default_factory=dict)

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

    @property
    def public_url(self) -> str:
        return (self.settings.public_url or self.api_url).rstrip("/")
