"""Short-lived, vault-scoped, proxy-role session tokens for `vault run` (SPEC §3.1, §7.1)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import col, select

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain.common import get_vault, iso
from agent_vault.domain.principal import Principal
from agent_vault.errors import Forbidden, InvalidRequest, NotFound, VaultForbidden
from agent_vault.models import Agent, Token, utcnow

MIN_TTL, MAX_TTL, DEFAULT_TTL = 300, 7 * 86400, 86400
POLICY_RANK = {"tunnel": 0, "passthrough": 1, "deny": 2}


def _ttl(ttl_seconds: int | None) -> int:
    ttl = DEFAULT_TTL if ttl_seconds is None else ttl_seconds
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidRequest("ttl must be between 5 minutes and 7 days")
    return ttl


def create_session(
    core: Core,
    p: Principal,
    vault: str,
    ttl_seconds: int | None = None,
    agent: str | None = None,
    label: str = "",
    unmatched_policy: str | None = None,
) -> dict[str, Any]:
    """Mint an av_sess_ token: agents for themselves (narrowing), member+ humans for an agent."""
    ttl = _ttl(ttl_seconds)
    if p.kind == "session":
        raise Forbidden("a session token cannot mint sessions", hint="Reuse the session token as is.")
    if p.role_on(vault) is None:
        raise VaultForbidden(f"this token may not use vault {vault}")
    view = core.runtime.snapshot.vaults.get(vault)
    if view is None:
        raise VaultForbidden(f"this token may not use vault {vault}")
    if unmatched_policy is not None:
        if unmatched_policy not in POLICY_RANK:
            raise InvalidRequest("unmatched_policy must be tunnel, passthrough or deny")
        if POLICY_RANK[unmatched_policy] < POLICY_RANK[view.unmatched_policy]:
            raise InvalidRequest(
                f"policy {unmatched_policy} is looser than the vault's {view.unmatched_policy}",
                hint="A session may only make the policy stricter.",
            )
    agent_id: int | None = p.agent_id if p.kind == "agent" else None
    if agent is not None and p.kind == "user":
        p.require(vault, "member", human=True)
        with core.store.read() as s:
            a = s.exec(select(Agent).where(Agent.name == agent)).first()
        if a is None or a.status != "active" or core.runtime.snapshot.principals is None:
            raise NotFound(f"agent {agent} not found")
        agent_id = a.id
        grants = {pp.name: pp for pp in core.runtime.snapshot.principals.values() if pp.kind == "agent"}
        if agent in grants and vault not in grants[agent].grants:
            raise InvalidRequest(f"agent {agent} has no grant on vault {vault}")
    elif agent is not None and agent != p.name:
        raise Forbidden("agents can only mint sessions for themselves")
    token = crypto.mint_token("av_sess_")
    expires = utcnow() + timedelta(seconds=ttl)
    with core.store.write() as s:
        v = get_vault(s, vault)
        row = Token(
            digest=crypto.digest(token),
            kind="session",
            vault_id=v.id,
            expires_at=expires,
            label=label,
            agent_id=agent_id,
            user_id=p.user_id if agent_id is None else None,
            unmatched_policy=unmatched_policy,
        )
        s.add(row)
    core.runtime.reload(vaults=False)
    core.record("session.create", p.actor, vault=vault, target=str(row.id), details={"ttl_seconds": ttl})
    host = core.settings.effective_proxy_host
    return {
        "id": row.id,
        "token": token,
        "vault": vault,
        "expires_at": iso(expires),
        "proxy_url": f"http://{host}:{core.proxy_port}" if core.proxy_port else None,
        "addr": core.public_url,
    }


def _own(core: Core, p: Principal, row: Token) -> bool:
    return (
        (p.kind == "user" and row.user_id == p.user_id)
        or (p.kind == "agent" and row.agent_id == p.agent_id)
        or (p.kind == "session" and row.id == p.token_id)
    )


def _load(core: Core, p: Principal, session_id: int) -> tuple[Token, str]:
    with core.store.read() as s:
        row = s.get(Token, session_id)
        if row is None or row.kind != "session":
            raise NotFound(f"session {session_id} not found")
        from agent_vault.models import Vault

        v = s.get(Vault, row.vault_id)
    vault = v.name if v else ""
    if not _own(core, p, row) and (p.role_on(vault) not in ("member", "admin") or not p.is_human):
        raise NotFound(f"session {session_id} not found")
    return row, vault


def list_sessions(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    p.require(vault, "member")
    with core.store.read() as s:
        v = get_vault(s, vault)
        rows = list(
            s.exec(
                select(Token).where(
                    Token.kind == "session", Token.vault_id == v.id, col(Token.revoked_at).is_(None)
                )
            )
        )
    now = utcnow()
    return {
        "sessions": [
            {"id": r.id, "label": r.label, "created_at": iso(r.created_at), "expires_at": iso(r.expires_at)}
            for r in rows
            if r.expires_at and r.expires_at > now
        ]
    }


def renew_session(
    core: Core, p: Principal, session_id: int, ttl_seconds: int | None = None
) -> dict[str, Any]:
    row, _vault = _load(core, p, session_id)
    # A session may revoke itself (a narrowing) but never extend itself: its TTL is the dead-man
    # switch when the `vault run` wrapper dies (SPEC §7.1); renewal is the creator's (§9).
    if p.kind == "session" or not _own(core, p, row):
        raise Forbidden("only the creator can renew a session")
    if row.revoked_at is not None or (row.expires_at and row.expires_at <= utcnow()):
        raise NotFound(f"session {session_id} is expired or revoked")
    expires = utcnow() + timedelta(seconds=_ttl(ttl_seconds))
    with core.store.write() as s:
        r = s.get(Token, session_id)
        assert r is not None
        r.expires_at = expires
        s.add(r)
    core.runtime.reload(vaults=False)
    return {"id": session_id, "expires_at": iso(expires)}


def revoke_session(core: Core, p: Principal, session_id: int) -> None:
    _row, vault = _load(core, p, session_id)
    with core.store.write() as s:
        r = s.get(Token, session_id)
        assert r is not None
        r.revoked_at = r.revoked_at or utcnow()
        s.add(r)
    core.runtime.reload(vaults=False)
    core.record("session.revoke", p.actor, vault=vault, target=str(session_id))
