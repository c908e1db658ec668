"""Agents and their long-lived tokens (SPEC §3.1, §3.3). Tokens are shown once, stored as digests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain.common import get_vault, iso, step_up
from agent_vault.domain.names import check_name
from agent_vault.domain.principal import Principal
from agent_vault.errors import Conflict, Forbidden, InvalidRequest, NotFound
from agent_vault.models import Agent, Grant, Token, Vault, utcnow


def require_manager(p: Principal, vaults: list[str]) -> None:
    """Owner, or a user who is admin of every vault the agent is (or would be) granted on."""
    p.require_user()
    if p.is_owner:
        return
    if not vaults:
        raise Forbidden("only the owner can manage an agent without vault grants")
    for v in vaults:
        p.require(v, "admin", human=True)


def _get(s: Session, name: str) -> Agent:
    a = s.exec(select(Agent).where(Agent.name == name)).first()
    if a is None:
        raise NotFound(f"agent {name} not found", hint="List agents with 'agent-vault agent list'.")
    return a


def _grants(s: Session, agent_id: int | None) -> list[dict[str, str]]:
    out = []
    for g in s.exec(select(Grant).where(Grant.subject_kind == "agent", Grant.subject_id == agent_id)):
        v = s.get(Vault, g.vault_id)
        if v is not None:
            out.append({"name": v.name, "role": g.role})
    return sorted(out, key=lambda x: x["name"])


def _public(s: Session, a: Agent) -> dict[str, Any]:
    return {
        "name": a.name,
        "status": a.status,
        "description": a.description,
        "created_at": iso(a.created_at),
        "last_used_at": iso(a.last_used_at),
        "vaults": _grants(s, a.id),
    }


def list_agents(core: Core, p: Principal) -> dict[str, Any]:
    p.require_user()
    with core.store.read() as s:
        return {"agents": [_public(s, a) for a in s.exec(select(Agent).order_by(Agent.name))]}


def get_agent(core: Core, p: Principal, name: str) -> dict[str, Any]:
    """One agent; `previous_token_expires_at`: when the latest token still in its `rotate --grace`
    period stops working (None: no graced token; a rotation without grace ends them all)."""
    p.require_user()
    with core.store.read() as s:
        a = _get(s, name)
        now = utcnow()
        graced = [
            t.expires_at
            for t in s.exec(
                select(Token).where(
                    Token.agent_id == a.id, Token.kind == "agent", col(Token.revoked_at).is_(None)
                )
            )
            if t.expires_at is not None and t.expires_at > now
        ]
        live = a.status == "active" and graced
        return _public(s, a) | {"previous_token_expires_at": iso(max(graced)) if live else None}


def _new_token(s: Session, agent_id: int) -> str:
    token = crypto.mint_token("av_agt_")
    s.add(Token(digest=crypto.digest(token), kind="agent", agent_id=agent_id))
    return token


def create_agent(
    core: Core,
    p: Principal,
    password: str | None,
    name: str,
    vaults: list[dict[str, str]],
    description: str = "",
) -> dict[str, Any]:
    check_name(name, "agent name")
    roles = {g["vault"]: g.get("role", "proxy") for g in vaults}
    for role in roles.values():
        if role == "admin":
            raise InvalidRequest("agents cannot be granted admin", hint="Use proxy or member.")
        if role not in ("proxy", "member"):
            raise InvalidRequest("agent role must be proxy or member")
    if len(description) > 500:
        raise InvalidRequest("description is longer than 500 characters")
    require_manager(p, list(roles))
    step_up(core, p, password)
    with core.store.write() as s:
        if s.exec(select(Agent).where(Agent.name == name)).first():
            raise Conflict(
                f"agent {name} already exists",
                hint=f"Pick another name, or see this one with 'agent-vault agent info {name}'.",
            )
        vault_rows = {v: get_vault(s, v) for v in roles}
        a = Agent(name=name, description=description)
        s.add(a)
        s.flush()
        assert a.id is not None
        for vname, role in roles.items():
            vid = vault_rows[vname].id
            assert vid is not None
            s.add(Grant(vault_id=vid, subject_kind="agent", subject_id=a.id, role=role))
        token = _new_token(s, a.id)
    core.runtime.reload(vaults=False)
    core.record("agent.create", p.actor, target=name, details={"vaults": sorted(roles)})
    return {
        "name": name,
        "token": token,
        "vaults": [{"name": v, "role": r} for v, r in sorted(roles.items())],
    }


def vault_names(s: Session, a: Agent) -> list[str]:
    return [g["name"] for g in _grants(s, a.id)]


def rotate_agent(
    core: Core, p: Principal, password: str | None, name: str, grace_seconds: int = 0
) -> dict[str, Any]:
    if not 0 <= grace_seconds <= 86400:
        raise InvalidRequest("grace must be between 0 and 86400 seconds")
    with core.store.read() as s:
        require_manager(p, vault_names(s, _get(s, name)))
    step_up(core, p, password)
    old_expiry = utcnow() + timedelta(seconds=grace_seconds)
    with core.store.write() as s:
        a = _get(s, name)
        assert a.id is not None
        for t in s.exec(
            select(Token).where(
                Token.agent_id == a.id, Token.kind == "agent", col(Token.revoked_at).is_(None)
            )
        ):
            if grace_seconds:
                t.expires_at = min(t.expires_at or old_expiry, old_expiry)
            else:
                t.revoked_at = utcnow()
            s.add(t)
        a.status = "active"
        s.add(a)
        token = _new_token(s, a.id)
    core.runtime.reload(vaults=False)
    core.record("agent.rotate", p.actor, target=name, details={"grace_seconds": grace_seconds})
    return {"name": name, "token": token, "old_token_expires_at": iso(old_expiry)}


def revoke_agent(core: Core, p: Principal, name: str) -> dict[str, Any]:
    with core.store.write() as s:
        a = _get(s, name)
        require_manager(p, vault_names(s, a))
        a.status = "revoked"
        s.add(a)
        for t in s.exec(select(Token).where(Token.agent_id == a.id, col(Token.revoked_at).is_(None))):
            t.revoked_at = utcnow()
            s.add(t)
    core.runtime.reload(vaults=False)
    core.record("agent.revoke", p.actor, target=name)
    return {"name": name, "status": "revoked"}


def delete_agent(core: Core, p: Principal, name: str) -> None:
    with core.store.write() as s:
        a = _get(s, name)
        require_manager(p, vault_names(s, a))
        for g in s.exec(select(Grant).where(Grant.subject_kind == "agent", Grant.subject_id == a.id)):
            s.delete(g)
        for t in s.exec(select(Token).where(Token.agent_id == a.id)):
            s.delete(t)
        s.flush()  # children first: the FK cascade must not empty them under the ORM's feet
        s.delete(a)
    core.runtime.reload(vaults=False)
    core.record("agent.delete", p.actor, target=name)
