"""Users: login/logout, invites, roles (SPEC §3, §9)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain.common import check_limiter, get_vault, iso, login_limiter, step_up
from agent_vault.domain.names import check_email
from agent_vault.domain.principal import ROLE_RANK, Principal
from agent_vault.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from agent_vault.models import Grant, Invite, Token, User, utcnow
from agent_vault.passwords import hash_password, verify_password

#: A user login lives 30 days past its last use, and never past 365 days after it was made (SPEC §3.1).
USER_TOKEN_TTL = timedelta(days=30)
USER_TOKEN_MAX_AGE = timedelta(days=365)
#: A login's expiry moves at most this often (one write + identity reload per active login and period).
EXTEND_EVERY = timedelta(hours=1)
#: (instance, token id) -> when `keep_alive` last read the row (this process): at most one read a period.
_checked: dict[tuple[str, int], datetime] = {}
_CHECKED_MAX = 10_000
log = logging.getLogger("agent_vault.api")


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def login(core: Core, email: str, password: str, label: str = "") -> dict[str, Any]:
    email = email.strip().lower()
    limiter = login_limiter(core)
    check_limiter(limiter, email)
    with core.store.read() as s:
        user = s.exec(select(User).where(User.email == email)).first()
    if not verify_password(user.password_hash if user else None, password) or user is None:
        limiter.fail(email)
        core.record("auth.login_failed", f"user:{email}")
        raise Unauthenticated("wrong email or password")
    token = crypto.mint_token("av_usr_")
    expires = utcnow() + USER_TOKEN_TTL
    with core.store.write() as s:
        s.add(
            Token(digest=crypto.digest(token), kind="user", user_id=user.id, label=label, expires_at=expires)
        )
    core.runtime.reload(vaults=False)
    return {"token": token, "expires_at": iso(expires), "user": {"email": user.email, "role": user.role}}


def keep_alive(core: Core, p: Principal) -> None:
    """Slide a user login's idle expiry on an authenticated use (SPEC §3.1): to now + 30 days, capped at
    its creation + 365 days. Cheap on most calls (the snapshot's expiry is recent: nothing to do); else
    at most one row read per login per `EXTEND_EVERY` in this process, and a write plus an identity
    reload only when the expiry moves by at least `EXTEND_EVERY`. Other token kinds: no-op."""
    if p.kind != "user" or p.expires_at is None:
        return
    now = utcnow()
    if now + USER_TOKEN_TTL - _aware(p.expires_at) < EXTEND_EVERY:
        return
    key = (core.instance_id, p.token_id)
    last = _checked.get(key)
    if last is not None and now - last < EXTEND_EVERY:
        return  # read recently (e.g. at its 365-day cap): no store access on every request
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked[key] = now
    try:
        new = _slid_expiry(core, p.token_id, now)
        if new is None:
            return
        with core.store.write() as s:
            t = s.get(Token, p.token_id)
            if t is None or t.revoked_at is not None:
                return
            t.expires_at = new
            s.add(t)
    except SQLAlchemyError as e:  # bookkeeping: a busy store must not fail the request it rides on
        _checked.pop(key, None)
        log.warning("login expiry not extended: %s", type(e).__name__)
        return
    core.runtime.reload(vaults=False)


def _slid_expiry(core: Core, token_id: int, now: datetime) -> datetime | None:
    """The login's new expiry (now + 30 days, capped at creation + 365 days), or None to leave it: gone,
    revoked, already expired, or it would move by less than `EXTEND_EVERY` (e.g. at its cap)."""
    with core.store.read() as s:
        t = s.get(Token, token_id)
    if t is None or t.kind != "user" or t.revoked_at is not None or t.expires_at is None:
        return None
    current = _aware(t.expires_at)
    new = min(now + USER_TOKEN_TTL, _aware(t.created_at) + USER_TOKEN_MAX_AGE)
    return None if current <= now or new - current < EXTEND_EVERY else new


def logout(core: Core, p: Principal) -> None:
    p.require_user()
    with core.store.write() as s:
        t = s.get(Token, p.token_id)
        if t is not None:
            t.revoked_at = utcnow()
            s.add(t)
    core.runtime.reload(vaults=False)
    core.record("auth.logout", p.actor, target=str(p.token_id))


def me(p: Principal) -> dict[str, Any]:
    vaults: list[dict[str, str | None]]
    if p.kind == "session":
        vaults = [{"name": p.session_vault, "role": "proxy"}]
    elif p.is_owner:
        vaults = []  # filled by the API with every vault
    else:
        vaults = [{"name": n, "role": r} for n, r in sorted(p.grants.items())]
    # users: their instance role; agents: their highest vault role (a member agent is not "proxy")
    grants = [r for r in p.grants.values() if r in ROLE_RANK] if p.kind == "agent" else []
    role = p.instance_role if p.kind == "user" else max(grants, key=ROLE_RANK.__getitem__, default="proxy")
    out: dict[str, Any] = {"kind": p.kind, "name": p.name, "role": role, "vaults": vaults}
    if p.kind == "session":  # its own id: what POST /v1/sessions/{id}/settle takes
        out["session_id"] = p.token_id
    return out


def list_users(core: Core, p: Principal) -> dict[str, Any]:
    p.require_owner()
    with core.store.read() as s:
        users = list(s.exec(select(User).order_by(col(User.id))))
    return {"users": [{"email": u.email, "role": u.role, "created_at": iso(u.created_at)} for u in users]}


def _owners(core: Core) -> int:
    with core.store.read() as s:
        return len(list(s.exec(select(User).where(User.role == "owner"))))


def invite(
    core: Core, p: Principal, password: str | None, email: str, role: str, vaults: list[dict[str, str]]
) -> dict[str, Any]:
    p.require_owner()
    step_up(core, p, password)
    email = check_email(email)
    if role not in ("owner", "member"):
        raise InvalidRequest("role must be owner or member")
    with core.store.read() as s:
        if s.exec(select(User).where(User.email == email)).first():
            raise Conflict(f"user {email} already exists")
        for g in vaults:
            get_vault(s, g["vault"])
            if g.get("role", "member") not in ROLE_RANK:
                raise InvalidRequest("vault role must be proxy, member or admin")
    token = crypto.mint_token("av_inv_")
    expires = utcnow() + timedelta(hours=48)
    with core.store.write() as s:
        s.add(
            Invite(
                digest=crypto.digest(token),
                email=email,
                role=role,
                vaults=json.dumps(vaults),
                expires_at=expires,
                created_by=p.actor,
            )
        )
    core.record("user.invite", p.actor, target=email, details={"role": role})
    return {
        "invite_url": f"{core.public_url}/ui/invite?token={token}",
        "token": token,
        "expires_at": iso(expires),
    }


#: Listings are bounded: a hostile owner session cannot make one answer grow without limit.
MAX_LISTED = 1000


def list_invites(core: Core, p: Principal) -> dict[str, Any]:
    """Owner: pending invites (not accepted, not expired), oldest first. Never the token or its digest."""
    p.require_owner()
    now = utcnow()
    with core.store.read() as s:
        rows = list(
            s.exec(
                select(Invite)
                .where(col(Invite.accepted_at).is_(None), col(Invite.expires_at) > now)
                .order_by(col(Invite.id))
                .limit(MAX_LISTED)
            )
        )
    return {
        "invites": [
            {
                "id": r.id,
                "email": r.email,
                "role": r.role,
                "vaults": json.loads(r.vaults),
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
                "created_by": r.created_by,
            }
            for r in rows
        ]
    }


def revoke_invite(core: Core, p: Principal, invite_id: int) -> None:
    """Owner: delete a pending invite (its URL stops working at once); 404 if none is pending."""
    p.require_owner()
    with core.store.write() as s:
        inv = s.get(Invite, invite_id)
        if inv is None or inv.accepted_at is not None or inv.expires_at <= utcnow():
            raise NotFound(f"invite {invite_id} not found, used or expired")
        email = inv.email
        s.delete(inv)
    core.record("user.invite_revoke", p.actor, target=email, details={"invite": invite_id})


def accept_invite(core: Core, token: str, password: str) -> dict[str, Any]:
    if len(password) < 8:
        raise InvalidRequest("the password must be at least 8 characters")
    d = crypto.digest(token)
    with core.store.write() as s:
        inv = s.exec(select(Invite).where(Invite.digest == d)).first()
        if inv is None or inv.accepted_at is not None or inv.expires_at <= utcnow():
            raise NotFound("invite not found, used or expired", hint="Ask the owner for a new invite.")
        if s.exec(select(User).where(User.email == inv.email)).first():
            raise Conflict(f"user {inv.email} already exists")
        user = User(email=inv.email, password_hash=hash_password(password), role=inv.role)
        s.add(user)
        s.flush()
        assert user.id is not None
        for g in json.loads(inv.vaults):
            v = get_vault(s, g["vault"])
            assert v.id is not None
            s.add(Grant(vault_id=v.id, subject_kind="user", subject_id=user.id, role=g.get("role", "member")))
        inv.accepted_at = utcnow()
        s.add(inv)
    core.record("user.accept", f"user:{user.email}")
    return login(core, user.email, password)


def remove_user(core: Core, p: Principal, password: str | None, email: str) -> None:
    p.require_owner()
    step_up(core, p, password)
    email = email.lower()
    with core.store.write() as s:
        u = s.exec(select(User).where(User.email == email)).first()
        if u is None:
            raise NotFound(f"user {email} not found", hint="List users with 'agent-vault user list'.")
        if u.role == "owner" and _owners(core) <= 1:
            raise Conflict("the last owner cannot be removed")
        for g in s.exec(select(Grant).where(Grant.subject_kind == "user", Grant.subject_id == u.id)):
            s.delete(g)
        for t in s.exec(select(Token).where(Token.user_id == u.id)):
            s.delete(t)
        s.flush()  # children first: the FK cascade must not empty them under the ORM's feet
        s.delete(u)
    core.runtime.reload(vaults=False)
    core.record("user.remove", p.actor, target=email)


def set_role(core: Core, p: Principal, password: str | None, email: str, role: str) -> dict[str, Any]:
    p.require_owner()
    step_up(core, p, password)
    if role not in ("owner", "member"):
        raise InvalidRequest("role must be owner or member")
    with core.store.write() as s:
        u = s.exec(select(User).where(User.email == email.lower())).first()
        if u is None:
            raise NotFound(f"user {email} not found", hint="List users with 'agent-vault user list'.")
        if u.role == "owner" and role != "owner" and _owners(core) <= 1:
            raise Conflict("the last owner cannot be demoted")
        u.role = role
        s.add(u)
    core.runtime.reload(vaults=False)
    core.record("user.role", p.actor, target=email, details={"role": role})
    return {"email": u.email, "role": u.role}
