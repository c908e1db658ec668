"""The in-memory view the proxy and the agent-facing API read (SPEC §5.2-§5.4): vaults with their
service index and decrypted values, and the live principals by token digest. Pure data: no ORM, no
mitmproxy; `agent_vault.runtime` builds it from the store.

Danger: `VaultView.values` holds decrypted credential values: never log or repr them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent_vault.credsource import SourceSpec
from agent_vault.domain.names import shown
from agent_vault.domain.principal import Principal
from agent_vault.errors import VaultForbidden, VaultRequired
from agent_vault.matching import ServiceIndex
from agent_vault.servicedef import ServiceDef

__all__ = ["POLICY_RANK", "Snapshot", "VaultView", "effective_policy", "select_vault"]

POLICY_RANK = {"tunnel": 0, "passthrough": 1, "deny": 2}  # unmatched-host policies, loosest first


@dataclass(frozen=True, slots=True)
class VaultView:
    id: int
    name: str
    unmatched_policy: str
    enforcement: str
    index: ServiceIndex
    services: tuple[ServiceDef, ...]
    values: dict[str, str] = field(repr=False)
    corrupt: frozenset[str] = frozenset()
    rate_limits: str | None = None  # None: the server's profile
    sources: Mapping[str, SourceSpec] = field(default_factory=dict, repr=False)  # dynamic keys

    def __repr__(self) -> str:
        return f"VaultView({self.name!r}, services={len(self.services)}, keys={sorted(self.values)})"

    def key_names(self) -> list[str]:
        """Every key with a value now or from a source (names only: what discover lists)."""
        return sorted(set(self.values) | set(self.sources))


@dataclass(frozen=True, slots=True)
class Snapshot:
    principals: dict[str, Principal]  # token digest -> principal
    vaults: dict[str, VaultView]
    version: int = 0

    def principal(self, token_digest: str) -> Principal | None:
        """The live principal for a token digest, or None if unknown, revoked or expired."""
        p = self.principals.get(token_digest)
        if p is None:
            return None
        if p.expires_at is not None and p.expires_at <= datetime.now(UTC):
            return None
        return p


def select_vault(vaults: Mapping[str, object], p: Principal, hint: str | None, *, how_to_name: str) -> str:
    """The one vault-selection rule (SPEC §5.2), for the proxy and the agent-facing API alike.

    A session is bound to its vault; a named vault (proxy userinfo or `X-Vault`) must exist and be
    one the principal holds a role on; without a name, the single vault the principal may use, else
    `vault_required` listing them (`how_to_name` says how to name one on this surface).
    """
    if p.kind == "session":
        if hint and hint != p.session_vault:
            raise VaultForbidden(f"this session is bound to vault {p.session_vault}")
        if p.session_vault is None or p.session_vault not in vaults:
            raise VaultForbidden(f"vault {p.session_vault} no longer exists")
        return p.session_vault
    if hint:
        if hint not in vaults or p.role_on(hint) is None:
            raise VaultForbidden(f"this token may not use vault {shown(hint)}")
        return hint
    names = sorted(n for n in vaults if p.role_on(n) is not None)
    if len(names) == 1:
        return names[0]
    raise VaultRequired(
        "this token can use several vaults (or none): name one", hint=how_to_name, vaults=names
    )


def effective_policy(view: VaultView, p: Principal) -> str:
    """The one unmatched-host policy rule (SPEC §5.3, §7.1), for the proxy and discover alike: the
    vault's policy, or a session's stricter override; a narrowed session (issue 19) reaches nothing else."""
    if p.narrowed:
        return "deny"
    policy = view.unmatched_policy
    if p.session_policy and POLICY_RANK[p.session_policy] > POLICY_RANK[policy]:
        policy = p.session_policy
    return policy
