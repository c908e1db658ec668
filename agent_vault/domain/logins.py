"""A user's own login sessions (SPEC §9 `/v1/auth/sessions`): the `av_usr_` tokens minted by
`POST /v1/auth/login` (CLI logins and the web UI's cookie alike).

Only humans, only their own: another user's login id answers 404 (existence is not revealed), agent and
session tokens 403. Never a token or its digest in an answer.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from agent_vault.core import Core
from agent_vault.domain.common import iso
from agent_vault.domain.principal import Principal
from agent_vault.errors import NotFound
from agent_vault.models import Token, utcnow

#: Newest logins listed at most (a script logging in in a loop cannot make the answer unbounded).
MAX_LISTED = 1000


def list_logins(core: Core, p: Principal) -> dict[str, Any]:
    """The caller's live logins, newest first; `current` marks the one making this request."""
    p.require_user()
    now = utcnow()
    with core.store.read() as s:
        rows = list(
            s.exec(
                select(Token)
                .where(
                    Token.kind == "user",
                    Token.user_id == p.user_id,
                    col(Token.revoked_at).is_(None),
                    col(Token.expires_at) > now,
                )
                .order_by(col(Token.id).desc())
                .limit(MAX_LISTED)
            )
        )
    return {
        "sessions": [
            {
                "id": r.id,
                "label": r.label,
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
                "current": r.id == p.token_id,
            }
            for r in rows
        ]
    }


def revoke_login(core: Core, p: Principal, login_id: int) -> None:
    """Revoke one of the caller's own logins (the current one too: that is a logout). Effective for the
    very next request. 404 for an unknown, foreign, revoked or expired id."""
    p.require_user()
    with core.store.write() as s:
        row = s.get(Token, login_id)
        if (
            row is None
            or row.kind != "user"
            or row.user_id != p.user_id
            or row.revoked_at is not None
            or (row.expires_at is not None and row.expires_at <= utcnow())
        ):
            raise NotFound(f"login session {login_id} not found")
        row.revoked_at = utcnow()
        s.add(row)
    core.runtime.reload(vaults=False)
    core.record("auth.revoke", p.actor, target=str(login_id), details={"current": login_id == p.token_id})
