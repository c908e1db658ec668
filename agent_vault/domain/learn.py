"""Learn mode (issue #20): `vault settings --enforcement learn` forwards what would be denied (like
dry-run) and drafts ONE proposal per unknown host, with the request count and methods seen and an
auth type guessed from the catalog when the host is a known one.

The proxy only notes hosts in memory (`Learner.note`: a dict update, bounded to `MAX_HOSTS` per
round); `write_drafts` runs off the event loop every few seconds and creates or updates the drafts
(status `draft`, never expiring, not counted against the pending limit). Approving a draft is the
normal approval flow. Drafts hold host names, methods and counts: never a value, header or path.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from agent_vault.catalog import load_catalog
from agent_vault.core import Core
from agent_vault.domain import changeset as cs
from agent_vault.domain.proposals import PENDING_TTL
from agent_vault.errors import AgentVaultError
from agent_vault.models import Proposal, Vault, utcnow

MAX_HOSTS = 1000  # distinct hosts noted per round; more are dropped (counted in `dropped`)
ACTOR = "learn-mode"
_COUNTS = re.compile(r"^learn mode: (\d+) requests? to \S+ \(methods: ([A-Z, ]*)\)")


@dataclass(slots=True)
class Seen:
    count: int = 0
    methods: set[str] = field(default_factory=set)


class Learner:
    """What the proxy saw of unknown hosts since the last round (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int], Seen] = {}
        self.dropped = 0

    def note(self, vault: str, host: str, port: int, method: str) -> None:
        key = (vault, host, port)
        with self._lock:
            s = self._seen.get(key)
            if s is None:
                if len(self._seen) >= MAX_HOSTS:
                    self.dropped += 1
                    return
                s = self._seen[key] = Seen()
            s.count += 1
            if len(s.methods) < 16 and method.isalpha() and len(method) <= 16:
                s.methods.add(method.upper())

    def drain(self) -> dict[tuple[str, str, int], Seen]:
        with self._lock:
            out, self._seen = self._seen, {}
            return out


def _name_for(host: str) -> str:
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", host.lower())).strip("-")[:56].strip("-")
    return f"learned-{name}" if name else "learned-host"


def _service(host: str, port: int, vault_keys: set[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The drafted service (catalog template when the host is known, else passthrough) and the
    credential entries (names only) it needs."""
    for entry in load_catalog():
        if entry.host == host:
            svc = {"action": "set", **entry.service_definition(entry.id)}
            creds = [
                {"action": "set", "key": k, "description": f"for {entry.name}"}
                for k in entry.suggested_keys
                if k not in vault_keys
            ]
            if port != 443:
                svc["port"] = port
            return svc, creds
    svc = {"action": "set", "name": _name_for(host), "host": host, "auth": {"type": "passthrough"}}
    if port != 443:
        svc["port"] = port
    return svc, []


def _message(host: str, port: int, count: int, methods: set[str]) -> str:
    target = host if port == 443 else f"{host}:{port}"
    return (
        f"learn mode: {count} request{'s' if count != 1 else ''} to {target} "
        f"(methods: {', '.join(sorted(methods))})"
    )


def _draft_for(rows: list[Proposal], host: str, port: int) -> Proposal | None:
    for pr in rows:
        for s in json.loads(pr.services):
            if s.get("host") == host and (s.get("port") or 443) == port:
                return pr
    return None


def write_drafts(core: Core, seen: dict[tuple[str, str, int], Seen]) -> int:
    """Create or update one draft per (vault, host, port); returns how many were created."""
    created: list[tuple[str, int]] = []
    for (vault, host, port), s in seen.items():
        try:
            with core.store.write() as db:
                v = db.exec(select(Vault).where(Vault.name == vault)).first()
                if v is None or v.id is None:
                    continue
                rows = list(
                    db.exec(
                        select(Proposal).where(Proposal.vault_id == v.id, col(Proposal.status) == "draft")
                    )
                )
                pr = _draft_for(rows, host, port)
                if pr is not None:
                    m = _COUNTS.match(pr.message)
                    count = s.count + (int(m.group(1)) if m else 0)
                    methods = s.methods | (
                        {x.strip() for x in m.group(2).split(",") if x.strip()} if m else set()
                    )
                    pr.message = _message(host, port, count, methods)
                    db.add(pr)
                    continue
                st = cs.vault_state(db, v)
                svc, creds = _service(host, port, set(st.creds))
                changes = cs.parse(
                    {
                        "services": [svc],
                        "credentials": creds,
                        "message": _message(host, port, s.count, s.methods),
                    }
                )
                cs.check_refs(changes, st)
                seq = v.next_proposal_seq
                v.next_proposal_seq = seq + 1
                now = utcnow()
                db.add(v)
                db.add(
                    Proposal(
                        vault_id=v.id,
                        seq=seq,
                        status="draft",
                        actor=ACTOR,
                        message=changes.message,
                        services=changes.services_json(),
                        credentials=changes.credentials_json(),
                        created_at=now,
                        expires_at=now + PENDING_TTL,
                    )
                )
                created.append((vault, seq))
        except AgentVaultError:
            continue  # e.g. a host no service definition accepts: nothing to draft
    for vault, seq in created:
        core.record("proposal.draft", ACTOR, vault=vault, target=str(seq))
    return len(created)
