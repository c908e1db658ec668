"""Short-lived, vault-scoped, proxy-role session tokens for `vault run` (SPEC §3.1, §7.1)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain.common import get_vault, iso
from agent_vault.domain.principal import Principal
from agent_vault.errors import Forbidden, InvalidRequest, NotFound, VaultForbidden
from agent_vault.models import Agent, Token, User, utcnow
from agent_vault.snapshot import POLICY_RANK

MIN_TTL, MAX_TTL, DEFAULT_TTL = 300, 7 * 86400, 86400
_METHOD = re.compile(r"^[A-Z]{1,32}$")
_LIST_HINT = "List live sessions with 'agent-vault vault session list'."


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
    only_services: list[str] | None = None,
    only_methods: list[str] | None = None,
) -> dict[str, Any]:
    """Mint an av_sess_ token: agents for themselves (narrowing), member+ humans for an agent.

    `only_services` / `only_methods` narrow the session to some services (and methods) of the vault
    (issue 19). A session token may mint only a narrower session of its own vault, for its own
    creator, expiring no later than itself; it is not renewable (the child may revoke itself)."""
    ttl = _ttl(ttl_seconds)
    services, methods = _narrowing(core, vault, only_services, only_methods)
    if p.kind == "session":
        return _child_session(core, p, vault, ttl, label, unmatched_policy, services, methods)
    if p.role_on(vault) is None:  # never says whether a vault the caller may not see exists
        raise VaultForbidden(f"this token may not use vault {vault}")
    view = core.runtime.snapshot.vaults.get(vault)
    if view is None:  # an owner may use any vault: this one does not exist
        raise NotFound(f"vault {vault} not found", hint="List vaults with 'agent-vault vault list'.")
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
            raise NotFound(f"agent {agent} not found", hint="List agents with 'agent-vault agent list'.")
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
            only_services=None if services is None else json.dumps(services),
            only_methods=None if methods is None else json.dumps(methods),
        )
        s.add(row)
    return _minted(core, p, vault, row, token, ttl, expires, services, methods)


def _minted(
    core: Core,
    p: Principal,
    vault: str,
    row: Token,
    token: str,
    ttl: int,
    expires: datetime,
    services: list[str] | None,
    methods: list[str] | None,
) -> dict[str, Any]:
    core.runtime.reload(vaults=False)
    details: dict[str, Any] = {"ttl_seconds": ttl}
    if services is not None or methods is not None:
        details["narrowed"] = {"services": services, "methods": methods}
    core.record("session.create", p.actor, vault=vault, target=str(row.id), details=details)
    host = core.settings.effective_proxy_host
    return {
        "id": row.id,
        "token": token,
        "vault": vault,
        "expires_at": iso(expires),
        "proxy_url": f"http://{host}:{core.proxy_port}" if core.proxy_port else None,
        "addr": core.public_url,
        "only_services": services,
        "only_methods": methods,
    }


def _narrowing(
    core: Core, vault: str, services: list[str] | None, methods: list[str] | None
) -> tuple[list[str] | None, list[str] | None]:
    """Validated narrowing: existing service names of the vault, HTTP method tokens."""
    if services is not None:
        if not services:
            raise InvalidRequest("only_services needs at least one service name")
        view = core.runtime.snapshot.vaults.get(vault)
        known = {svc.name for svc in view.services} if view is not None else set()
        unknown = [n for n in services if n not in known]
        if unknown:
            shown = ", ".join(n[:64] for n in unknown[:5])
            raise InvalidRequest(
                f"vault {vault} has no service {shown}", hint="List them with vault discover."
            )
        services = list(dict.fromkeys(services))
    if methods is not None:
        methods = list(dict.fromkeys(m.strip().upper() for m in methods))
        if not methods or any(not _METHOD.fullmatch(m) for m in methods):
            raise InvalidRequest("only_methods must be HTTP methods such as GET")
    return services, methods


def _child_session(
    core: Core,
    p: Principal,
    vault: str,
    ttl: int,
    label: str,
    unmatched_policy: str | None,
    services: list[str] | None,
    methods: list[str] | None,
) -> dict[str, Any]:
    """A session minting a narrower session of itself (nested `vault run --only-service`). The child
    records its parent (`parent_id`): it never outlives it, and revoking the parent revokes it."""
    if services is None and methods is None:
        raise Forbidden(
            "a session token can only mint a narrower session", hint="Reuse the session token as is."
        )
    if vault != p.session_vault:
        raise VaultForbidden(f"this session is bound to vault {p.session_vault}")
    if p.only_services is not None:
        if services is None:
            services = list(p.only_services)
        elif not set(services) <= set(p.only_services):
            raise Forbidden("a narrowed session can only mint a narrower one (services)")
    if p.only_methods is not None:
        if methods is None:
            methods = list(p.only_methods)
        elif not set(methods) <= set(p.only_methods):
            raise Forbidden("a narrowed session can only mint a narrower one (methods)")
    if unmatched_policy is not None and unmatched_policy not in POLICY_RANK:
        raise InvalidRequest("unmatched_policy must be tunnel, passthrough or deny")
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    if p.expires_at is not None and p.expires_at < expires:
        expires = p.expires_at  # never outlives its parent
    token = crypto.mint_token("av_sess_")
    with core.store.write() as s:
        parent = s.get(Token, p.token_id)
        if parent is None or parent.revoked_at is not None or _expired(parent, now):
            raise NotFound("this session is revoked")
        if parent.expires_at is not None and parent.expires_at < expires:
            expires = parent.expires_at  # the stored expiry: a renewal may have moved it since
        row = Token(
            digest=crypto.digest(token),
            kind="session",
            vault_id=parent.vault_id,
            expires_at=expires,
            label=label,
            agent_id=parent.agent_id,
            user_id=parent.user_id,
            unmatched_policy=unmatched_policy or p.session_policy,
            only_services=None if services is None else json.dumps(services),
            only_methods=None if methods is None else json.dumps(methods),
            parent_id=parent.id,
        )
        s.add(row)
    return _minted(
        core, p, vault, row, token, int((expires - now).total_seconds()), expires, services, methods
    )


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
            raise NotFound(
                f"session {session_id} not found",
                hint="List live sessions with 'agent-vault vault session list'.",
            )
        from agent_vault.models import Vault

        v = s.get(Vault, row.vault_id)
    vault = v.name if v else ""
    if not _own(core, p, row) and (p.role_on(vault) not in ("member", "admin") or not p.is_human):
        raise NotFound(
            f"session {session_id} not found",
            hint="List live sessions with 'agent-vault vault session list'.",
        )
    return row, vault


def list_sessions(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    """The vault's live sessions (member). `parent_id` names the session that minted a child session
    (None otherwise): revoking the parent revokes the child too."""
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
        creators = {r.id: _creator(s, r) for r in rows}
    now = utcnow()
    return {
        "sessions": [
            {
                "id": r.id,
                "label": r.label,
                "actor": creators[r.id],
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
                "parent_id": r.parent_id,
            }
            for r in rows
            if r.expires_at and r.expires_at > now
        ]
    }


def _creator(s: Any, row: Token) -> str | None:
    """Who the session acts for (SPEC §9 `actor`): `agent:<name>` or `user:<email>`, as audit rows name it."""
    if row.agent_id is not None:
        a = s.get(Agent, row.agent_id)
        return f"agent:{a.name}" if a is not None else None
    u = s.get(User, row.user_id) if row.user_id is not None else None
    return f"user:{u.email}" if u is not None else None


def renew_session(
    core: Core, p: Principal, session_id: int, ttl_seconds: int | None = None
) -> dict[str, Any]:
    """Move a live session's expiry to now + ttl (its creator only). A child session never outlives its
    parent (capped at the parent's expiry); the sessions a renewal shortens past are shortened too, so
    a parent's expiry ends its children as its revocation does."""
    row, vault = _load(core, p, session_id)
    # A session may revoke itself (a narrowing) but never extend itself: its TTL is the dead-man
    # switch when the `vault run` wrapper dies (SPEC §7.1); renewal is the creator's (§9).
    if p.kind == "session" or not _own(core, p, row):
        raise Forbidden("only the creator can renew a session")
    ttl = _ttl(ttl_seconds)
    with core.store.write() as s:
        now = utcnow()
        r = s.get(Token, session_id)
        assert r is not None
        if r.revoked_at is not None or _expired(r, now):
            raise NotFound(f"session {session_id} is expired or revoked")
        expires = now + timedelta(seconds=ttl)
        parent = s.get(Token, r.parent_id) if r.parent_id is not None else None
        if parent is not None and parent.expires_at is not None and parent.expires_at < expires:
            expires = parent.expires_at
        r.expires_at = expires
        s.add(r)
        for d in _descendants(s, session_id):
            if d.expires_at is None or d.expires_at > expires:
                d.expires_at = expires
                s.add(d)
    core.runtime.reload(vaults=False)
    core.record(
        "session.renew", p.actor, vault=vault, target=str(session_id), details={"expires_at": iso(expires)}
    )
    return {"id": session_id, "expires_at": iso(expires)}


def _expired(row: Token, now: datetime) -> bool:
    return row.expires_at is not None and row.expires_at <= now


def _descendants(s: Session, session_id: int) -> list[Token]:
    """Every session minted by `session_id`, transitively (children, their children, ...), in the
    caller's transaction. Revoked ones are walked through too: they may have been revoked alone."""
    out: list[Token] = []
    seen = {session_id}
    frontier = [session_id]
    while frontier:
        rows = list(s.exec(select(Token).where(col(Token.parent_id).in_(frontier), Token.kind == "session")))
        fresh = [r for r in rows if r.id is not None and r.id not in seen]
        frontier = [r.id for r in fresh if r.id is not None]
        seen.update(frontier)
        out.extend(fresh)
    return out


def _open_connections(core: Core, session_id: int) -> int:
    count = core.services.open_connections
    return count(session_id) if count is not None else 0


async def settle_session(core: Core, p: Principal, session_id: int, wait_seconds: float) -> dict[str, Any]:
    """Wait, at most `wait_seconds`, until no proxy connection of the session is open and the audit
    writer has committed every record accepted so far: then the session's requests are all in the
    log (`vault run` reads them after its child exits). On the server's loop, which is the proxy's:
    the store read and the flush run in threads. `settled` False: the wait ran out."""
    await asyncio.to_thread(_load, core, p, session_id)
    deadline = time.monotonic() + wait_seconds
    still_open = _open_connections(core, session_id)
    while still_open and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        still_open = _open_connections(core, session_id)
    for _ in range(3):  # a fast-path exchange cancelled by the hang-up writes its record on its next step
        await asyncio.sleep(0)
    try:
        await asyncio.to_thread(core.audit.flush, max(0.1, deadline - time.monotonic()))
        flushed = True
    except (TimeoutError, RuntimeError):
        flushed = False
    return {"id": session_id, "settled": flushed and not still_open, "open_connections": still_open}


def revoke_session(core: Core, p: Principal, session_id: int) -> list[int]:
    """Revoke a session and every session it minted, transitively, in one transaction; effective on
    the very next request (the snapshot is reloaded before this returns). Returns the ids of the
    descendants revoked with it. 404 `not_found` for a session already revoked or expired: nothing is
    written and nothing audited a second time."""
    _row, vault = _load(core, p, session_id)
    with core.store.write() as s:
        now = utcnow()
        r = s.get(Token, session_id)
        assert r is not None
        if r.revoked_at is not None:
            raise NotFound(f"session {session_id} is already revoked", hint=_LIST_HINT)
        if _expired(r, now):
            raise NotFound(f"session {session_id} has already expired", hint=_LIST_HINT)
        r.revoked_at = now
        s.add(r)
        cascade: list[int] = []
        for d in _descendants(s, session_id):
            if d.revoked_at is None:
                d.revoked_at = now
                s.add(d)
                assert d.id is not None
                cascade.append(d.id)
    core.runtime.reload(vaults=False)
    details = {"cascade": cascade} if cascade else None
    core.record("session.revoke", p.actor, vault=vault, target=str(session_id), details=details)
    return cascade
