"""Auth, agents, users, invites and session routes (SPEC §9)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from agent_vault.api.deps import UI_COOKIE, CoreDep, PrincipalDep, RowId, select_vault
from agent_vault.domain import agents, logins, sessions, users
from agent_vault.domain.vaults import visible_vaults
from agent_vault.errors import Forbidden
from agent_vault.schemas import (
    AgentCreate,
    AgentRotate,
    InviteAccept,
    InviteCreate,
    LoginIn,
    SessionCreate,
    SessionRenew,
    SessionSettle,
    StepUp,
    UserRole,
)

router = APIRouter()
J = dict[str, Any]
#: A narrowed session asked for a wider session: no role fixes that (Forbidden's default hint).
NARROWED_SESSION_HINT = (
    "A narrowed session can only mint sessions within its own services and methods: ask for a subset of "
    "them, or mint the wider session from the agent token (outside this 'vault run')."
)


@router.post("/v1/auth/login")
def login(body: LoginIn, core: CoreDep, request: Request, response: Response) -> J:
    """Log in: the token in the answer and as the UI cookie (HttpOnly, SameSite=Strict).

    Login CSRF: a foreign page could log the browser in to an account the attacker controls (the human
    would then review proposals in it), or guess passwords through the victim's browser. Both need a
    cross-origin POST, which browsers always send with their `Origin`; the app's CSRF guard
    (`api.csrf`) refuses any write whose `Origin` is not this server's, and refuses a missing `Origin`
    when a cookie is already there. Clients without an `Origin` (the CLI, scripts) log in as before."""
    out = users.login(core, body.email, body.password.get_secret_value(), body.label)
    secure = core.public_url.startswith("https://")
    response.set_cookie(UI_COOKIE, out["token"], httponly=True, samesite="strict", secure=secure)
    return out


@router.post("/v1/auth/logout", status_code=204)
def logout(core: CoreDep, p: PrincipalDep) -> Response:
    users.logout(core, p)
    return Response(status_code=204)


@router.get("/v1/auth/sessions")
def list_logins(core: CoreDep, p: PrincipalDep) -> J:
    """The caller's own logins (CLI and web UI); `current` is the one making this request."""
    return logins.list_logins(core, p)


@router.delete("/v1/auth/sessions/{sid}", status_code=204)
def revoke_login(sid: RowId, core: CoreDep, p: PrincipalDep) -> Response:
    """Revoke one of the caller's own logins; revoking the current one also clears the UI cookie."""
    logins.revoke_login(core, p, sid)
    response = Response(status_code=204)
    if sid == p.token_id:
        response.delete_cookie(UI_COOKIE, httponly=True, samesite="strict")
    return response


@router.get("/v1/auth/me")
def me(core: CoreDep, p: PrincipalDep) -> J:
    out = users.me(p)
    if p.is_owner:
        out["vaults"] = [{"name": n, "role": "admin"} for n in visible_vaults(core, p)]
    return out


@router.get("/v1/agents")
def list_agents(core: CoreDep, p: PrincipalDep) -> J:
    return agents.list_agents(core, p)


@router.post("/v1/agents", status_code=201)
def create_agent(body: AgentCreate, core: CoreDep, p: PrincipalDep) -> J:
    grants = [g.model_dump() for g in body.vaults]
    return agents.create_agent(core, p, body.pw(), body.name, grants, body.description)


@router.get("/v1/agents/{name}")
def get_agent(name: str, core: CoreDep, p: PrincipalDep) -> J:
    return agents.get_agent(core, p, name)


@router.delete("/v1/agents/{name}", status_code=204)
def delete_agent(name: str, core: CoreDep, p: PrincipalDep) -> Response:
    agents.delete_agent(core, p, name)
    return Response(status_code=204)


@router.post("/v1/agents/{name}/rotate")
def rotate_agent(name: str, body: AgentRotate, core: CoreDep, p: PrincipalDep) -> J:
    return agents.rotate_agent(core, p, body.pw(), name, body.grace_seconds)


@router.post("/v1/agents/{name}/revoke")
def revoke_agent(name: str, core: CoreDep, p: PrincipalDep) -> J:
    return agents.revoke_agent(core, p, name)


@router.post("/v1/sessions", status_code=201)
def create_session(body: SessionCreate, core: CoreDep, p: PrincipalDep) -> J:
    vault = select_vault(core, p, body.vault) if p.kind != "user" or body.vault is None else body.vault
    try:
        return sessions.create_session(
            core,
            p,
            vault,
            body.ttl_seconds,
            body.agent,
            body.label,
            body.unmatched_policy,
            body.only_services,
            body.only_methods,
        )
    except Forbidden as e:
        # a narrowed session asked for more than it has: no role fixes that (domain.sessions leaves
        # the generic role hint), say what it may mint
        if p.kind == "session" and p.narrowed and e.hint == Forbidden.hint:
            own = [f"{what} {', '.join(names)}" for what, names in
                   (("services", p.only_services), ("methods", p.only_methods)) if names]  # fmt: skip
            e.hint = NARROWED_SESSION_HINT + f" This one has: {'; '.join(own)}."
        raise


@router.get("/v1/sessions")
def list_sessions(core: CoreDep, p: PrincipalDep, vault: str = "default") -> J:
    return sessions.list_sessions(core, p, vault)


@router.post("/v1/sessions/{sid}/renew")
def renew_session(sid: RowId, body: SessionRenew, core: CoreDep, p: PrincipalDep) -> J:
    return sessions.renew_session(core, p, sid, body.ttl_seconds)


@router.post("/v1/sessions/{sid}/settle")
async def settle_session(sid: RowId, body: SessionSettle, core: CoreDep, p: PrincipalDep) -> J:
    return await sessions.settle_session(core, p, sid, body.wait_seconds)


@router.delete("/v1/sessions/{sid}", status_code=204)
def revoke_session(sid: RowId, core: CoreDep, p: PrincipalDep) -> Response:
    sessions.revoke_session(core, p, sid)
    return Response(status_code=204)


@router.get("/v1/users")
def list_users(core: CoreDep, p: PrincipalDep) -> J:
    return users.list_users(core, p)


@router.post("/v1/users/invites", status_code=201)
def invite(body: InviteCreate, core: CoreDep, p: PrincipalDep) -> J:
    return users.invite(core, p, body.pw(), body.email, body.role, [g.model_dump() for g in body.vaults])


@router.get("/v1/users/invites")
def list_invites(core: CoreDep, p: PrincipalDep) -> J:
    return users.list_invites(core, p)


@router.delete("/v1/users/invites/{iid}", status_code=204)
def revoke_invite(iid: RowId, core: CoreDep, p: PrincipalDep) -> Response:
    users.revoke_invite(core, p, iid)
    return Response(status_code=204)


@router.post("/v1/invites/{token}/accept", status_code=201)
def accept(token: str, body: InviteAccept, core: CoreDep) -> J:
    return users.accept_invite(core, token, body.password.get_secret_value())


@router.delete("/v1/users/{email}", status_code=204)
def remove_user(email: str, core: CoreDep, p: PrincipalDep, body: StepUp | None = None) -> Response:
    users.remove_user(core, p, body.pw() if body else None, email)
    return Response(status_code=204)


@router.patch("/v1/users/{email}")
def set_user_role(email: str, body: UserRole, core: CoreDep, p: PrincipalDep) -> J:
    return users.set_role(core, p, body.pw(), email, body.role)
