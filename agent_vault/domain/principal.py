"""Who presented a token, and what they may do (SPEC §3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent_vault.errors import Forbidden

ROLE_RANK = {"proxy": 0, "member": 1, "admin": 2}


def _role_hint(p: Principal, role: str) -> str:
    """What to do about a role too low: a session token only proxies (SPEC §3.1), others ask for a grant."""
    if p.kind == "session":
        return (
            "A session token (vault run) has role proxy only; run this with your own login or an "
            "agent token that holds the role."
        )
    return f"Ask a vault admin for role {role} on the vault."


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated actor. `grants` maps vault name -> role. Never holds the token text."""

    kind: str  # user | agent | session
    token_id: int
    name: str  # email for users, agent name, or the session's creator label
    user_id: int | None = None
    agent_id: int | None = None
    instance_role: str | None = None  # owner | member (users only)
    session_vault: str | None = None
    session_policy: str | None = None
    expires_at: datetime | None = None
    grants: dict[str, str] = field(default_factory=dict)
    only_services: tuple[str, ...] | None = None  # a narrowed session: these services only
    only_methods: tuple[str, ...] | None = None  # a narrowed session: these methods only

    @property
    def narrowed(self) -> bool:
        """A session limited to some services (and methods) of its vault (issue 19)."""
        return self.only_services is not None or self.only_methods is not None

    def allows(self, service: str | None, method: str) -> bool:
        """Whether a narrowed session may send `method` to `service` (None: no service matched)."""
        if not self.narrowed:
            return True
        if self.only_services is not None and service not in self.only_services:
            return False
        return service is not None and (self.only_methods is None or method in self.only_methods)

    @property
    def is_human(self) -> bool:
        return self.kind == "user"

    @property
    def is_owner(self) -> bool:
        return self.instance_role == "owner"

    @property
    def actor(self) -> str:
        """Audit label: `user:<email>`, `agent:<name>`, `session:<id>:<creator>`."""
        if self.kind == "session":
            return f"session:{self.token_id}:{self.name}"
        return f"{self.kind}:{self.name}"

    @property
    def owner(self) -> str:
        """Who the token acts for: `agent:<name>` or `user:<email>` (a session acts for its creator)."""
        return self.name if self.kind == "session" else f"{self.kind}:{self.name}"

    def role_on(self, vault: str) -> str | None:
        if self.kind == "session":
            return "proxy" if vault == self.session_vault else None
        if self.is_owner:
            return "admin"
        return self.grants.get(vault)

    def require(self, vault: str, role: str, *, human: bool = False) -> None:
        """Raise Forbidden unless this principal holds `role` (or more) on `vault`."""
        have = self.role_on(vault)
        if have is None:
            raise Forbidden(f"no access to vault {vault}", hint="Ask a vault admin for a grant.")
        if human and not self.is_human:
            raise Forbidden("this action is reserved to humans", hint="Propose the change instead.")
        if ROLE_RANK[have] < ROLE_RANK[role]:
            raise Forbidden(
                f"this action needs role {role} on vault {vault} (you have {have})",
                hint=_role_hint(self, role),
            )

    def require_user(self) -> None:
        if not self.is_human:
            raise Forbidden("this action needs a user login", hint="Run 'agent-vault auth login'.")

    def require_owner(self) -> None:
        self.require_user()
        if not self.is_owner:
            raise Forbidden(
                "this action needs the instance owner role", hint="Ask an instance owner to do it."
            )
