"""Request dependencies: the Core, the caller's Principal, vault selection (SPEC §8, §9)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain import users
from agent_vault.domain.principal import Principal
from agent_vault.errors import Locked, Unauthenticated
from agent_vault.snapshot import select_vault as _select_vault

#: SQLite integers are signed 64-bit: a larger id would overflow in the driver (a 500), so refuse it (422).
MAX_ROW_ID = 2**63 - 1
#: A row id (session, proposal) in a path.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def get_core(request: Request) -> Core:
    core = getattr(request.app.state, "core", None)
    if core is None:
        raise Locked("the server is not unlocked yet")
    assert isinstance(core, Core)
    return core


CoreDep = Annotated[Core, Depends(get_core)]


#: The web UI's login cookie (HttpOnly, SameSite=Strict). Writes carried by it pass `api.csrf` first.
UI_COOKIE = "av_ui"


def authorization_bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None (absent, other scheme, empty)."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def bearer_token(request: Request) -> str | None:
    """The caller's token: the Authorization header first, else the UI cookie (the one place a cookie
    becomes a credential; the app's CSRF guard has already vetted the Origin of cookie writes)."""
    return authorization_bearer(request) or request.cookies.get(UI_COOKIE) or None


#: Token prefixes of agents (av_agt_) and their sessions (av_sess_): callers that cannot log in.
AGENT_PREFIXES = ("av_agt_", "av_sess_")
#: A rejected agent or session bearer: agents cannot log in, they need a working token.
REJECTED_AGENT_HINT = (
    "Check the agent's token (AGENT_VAULT_TOKEN): it is wrong, expired or revoked. A session token ends "
    "with its 'vault run'; for a new agent token ask a human ('agent-vault agent rotate NAME')."
)
#: A rejected bearer of no known kind: it may be either's.
REJECTED_BEARER_HINT = (
    "Humans: log in with 'agent-vault auth login'. Agents: check AGENT_VAULT_TOKEN or ask a human for a "
    "new token ('agent-vault agent rotate NAME')."
)


def agent_caller(request: Request) -> bool:
    """Whether the request's bearer is an agent's or a session's token (by its prefix alone: cheap,
    and good enough to word a hint; never an authorisation decision)."""
    return (authorization_bearer(request) or "").startswith(AGENT_PREFIXES)


def rejected_token_hint(token: str) -> str:
    """What to do about a bearer the server does not accept: humans log in, agents need a new token."""
    if token.startswith(AGENT_PREFIXES):
        return REJECTED_AGENT_HINT
    if token.startswith("av_usr_"):
        return Unauthenticated.hint
    return REJECTED_BEARER_HINT


def get_principal(request: Request, core: CoreDep) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("missing bearer token")
    p = core.runtime.principal(crypto.digest(token))
    if p is None:
        raise Unauthenticated("invalid, expired or revoked token", hint=rejected_token_hint(token))
    users.keep_alive(core, p)  # a user login's idle expiry slides on use (SPEC §3.1)
    core.services.last_used.note(p)  # an agent's (or its session's) last use (SPEC §9)
    return p


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def select_vault(core: Core, p: Principal, hint: str | None) -> str:
    """The vault an API call acts on: the one rule of `agent_vault.snapshot.select_vault`."""
    return _select_vault(core.runtime.snapshot.vaults, p, hint, how_to_name="Send the X-Vault header.")


def vault_for(
    request: Request, core: CoreDep, p: PrincipalDep, x_vault: Annotated[str | None, Header()] = None
) -> str:
    return select_vault(core, p, x_vault)


VaultDep = Annotated[str, Depends(vault_for)]
