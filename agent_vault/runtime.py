"""The in-memory view the proxy and the API read on every request (no DB on the hot path).

`Runtime.reload()` rebuilds immutable snapshots from the store and swaps them in one assignment,
so readers on the event loop always see a consistent view. Any admin change calls it
synchronously before answering, so revocations apply to the very next request. `seen` is the
change counter (store/changes.py) the snapshot reflects: other replicas' changes are picked up by the
freshness watcher (agent_vault/freshness.py) when the database is ahead of it.
Danger: `VaultView.values` holds decrypted credential values; never log or repr it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from sqlmodel import col, select

from agent_vault import credsource, crypto
from agent_vault.domain.principal import Principal
from agent_vault.matching import ServiceIndex
from agent_vault.models import Agent, Credential, Grant, Service, Token, User, Vault
from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import Snapshot, VaultView
from agent_vault.store import Store
from agent_vault.store.changes import Versions, read_versions

log = logging.getLogger("agent_vault.runtime")


def _names(stored: str | None) -> tuple[str, ...] | None:
    """A narrowed session's JSON list column; anything unreadable narrows to nothing (fail closed)."""
    if stored is None:
        return None
    try:
        items = json.loads(stored)
    except ValueError:
        return ()
    return tuple(str(x) for x in items) if isinstance(items, list) else ()


class Runtime:
    """Holds the current Snapshot; `reload()` is thread-safe and cheap enough per admin change."""

    def __init__(self, store: Store, dek: bytes) -> None:
        self._store = store
        self._dek = dek
        self._lock = threading.Lock()
        self.snapshot = Snapshot({}, {})
        self.listeners: list[Callable[[], None]] = []
        self.seen: Versions = (-1, -1)  # (version, vaults_version) of the database the snapshot reflects

    def principal(self, token_digest: str) -> Principal | None:
        """The live principal for a token digest, or None if unknown, revoked or expired."""
        return self.snapshot.principal(token_digest)

    def reload(self, *, vaults: bool = True) -> None:
        """Rebuild from the store. `vaults=False` refreshes identities only (tokens, grants), which
        is what login, session and agent changes need; services and values are kept as they are."""
        with self._lock:
            with self._store.read() as s:
                versions = read_versions(s)  # first: the rows read next are at least this new
                vault_rows = list(s.exec(select(Vault)))
                grants = list(s.exec(select(Grant)))
                tokens = list(s.exec(select(Token).where(col(Token.revoked_at).is_(None))))
                users = {u.id: u for u in s.exec(select(User))}
                agents = {a.id: a for a in s.exec(select(Agent))}
                if vaults:
                    services = list(
                        s.exec(select(Service).order_by(col(Service.vault_id), col(Service.position)))
                    )
                    creds = list(s.exec(select(Credential)))
            vault_name = {v.id: v.name for v in vault_rows}
            principals = self._principals(tokens, grants, users, agents, vault_name)
            views = self._vaults(vault_rows, services, creds) if vaults else self.snapshot.vaults
            self.snapshot = Snapshot(principals, views, self.snapshot.version + 1)
            self.seen = versions if vaults else (versions[0], self.seen[1])
        for fn in self.listeners:
            fn()

    @staticmethod
    def _principals(
        tokens: list[Token],
        grants: list[Grant],
        users: dict[int | None, User],
        agents: dict[int | None, Agent],
        vault_name: dict[int | None, str],
    ) -> dict[str, Principal]:
        by_subject: dict[tuple[str, int], dict[str, str]] = {}
        for g in grants:
            by_subject.setdefault((g.subject_kind, g.subject_id), {})[vault_name[g.vault_id]] = g.role
        out: dict[str, Principal] = {}
        for t in tokens:
            assert t.id is not None
            if t.kind == "user" and t.user_id in users:
                u = users[t.user_id]
                assert u.id is not None
                out[t.digest] = Principal(
                    "user",
                    t.id,
                    u.email,
                    user_id=u.id,
                    instance_role=u.role,
                    expires_at=t.expires_at,
                    grants=by_subject.get(("user", u.id), {}),
                )
            elif t.kind == "agent" and t.agent_id in agents:
                a = agents[t.agent_id]
                assert a.id is not None
                if a.status != "active":
                    continue
                out[t.digest] = Principal(
                    "agent",
                    t.id,
                    a.name,
                    agent_id=a.id,
                    expires_at=t.expires_at,
                    grants=by_subject.get(("agent", a.id), {}),
                )
            elif t.kind == "session" and t.vault_id in vault_name:
                # a session is a narrowing of its creator (SPEC §3.3): it lives only while the creator is
                # active and still holds a grant on the session's vault (an owner holds every vault)
                if t.agent_id is not None:
                    a2 = agents.get(t.agent_id)
                    if a2 is None or a2.status != "active":
                        continue
                    creator, has_grant = (
                        f"agent:{a2.name}",
                        vault_name[t.vault_id] in by_subject.get(("agent", t.agent_id), {}),
                    )
                else:
                    u2 = users.get(t.user_id)
                    if u2 is None or t.user_id is None:
                        continue
                    creator = f"user:{u2.email}"
                    has_grant = u2.role == "owner" or vault_name[t.vault_id] in by_subject.get(
                        ("user", t.user_id), {}
                    )
                if not has_grant:
                    continue
                out[t.digest] = Principal(
                    "session",
                    t.id,
                    creator,
                    user_id=t.user_id,
                    agent_id=t.agent_id,
                    session_vault=vault_name[t.vault_id],
                    session_policy=t.unmatched_policy,
                    expires_at=t.expires_at,
                    only_services=_names(t.only_services),
                    only_methods=_names(t.only_methods),
                )
        return out

    def _vaults(
        self, vault_rows: list[Vault], services: list[Service], creds: list[Credential]
    ) -> dict[str, VaultView]:
        svc_by_vault: dict[int, list[ServiceDef]] = {}
        for row in services:
            d = json.loads(row.definition)
            d["enabled"] = row.enabled
            svc_by_vault.setdefault(row.vault_id, []).append(ServiceDef.model_validate(d))
        values: dict[int, dict[str, str]] = {}
        sources: dict[int, dict[str, credsource.SourceSpec]] = {}
        corrupt: dict[int, set[str]] = {}
        for c in creds:
            if c.source_kind is not None and c.source is not None:
                try:
                    spec = credsource.open_spec(self._dek, c.source, c.vault_id, c.key, c.key_version)
                    sources.setdefault(c.vault_id, {})[c.key] = spec
                except (crypto.DecryptionError, ValueError, KeyError, TypeError):
                    log.error("credential source %s in vault id %s failed to decrypt", c.key, c.vault_id)
                    corrupt.setdefault(c.vault_id, set()).add(c.key)
                continue
            if c.ciphertext is None:
                continue
            try:
                plain = crypto.open_sealed(
                    self._dek, c.ciphertext, crypto.credential_aad(c.vault_id, c.key, c.key_version)
                )
                values.setdefault(c.vault_id, {})[c.key] = plain.decode()
            except (crypto.DecryptionError, UnicodeDecodeError):
                log.error("credential %s in vault id %s failed to decrypt", c.key, c.vault_id)
                corrupt.setdefault(c.vault_id, set()).add(c.key)
        out: dict[str, VaultView] = {}
        for v in vault_rows:
            assert v.id is not None
            svcs = tuple(svc_by_vault.get(v.id, []))
            out[v.name] = VaultView(
                v.id,
                v.name,
                v.unmatched_policy,
                v.enforcement,
                ServiceIndex(svcs),
                svcs,
                values.get(v.id, {}),
                frozenset(corrupt.get(v.id, set())),
                v.rate_limits,
                sources.get(v.id, {}),
            )
        return out
