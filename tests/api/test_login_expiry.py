"""User logins: 30 days idle, 365 days absolute (SPEC §3.1); logout and session renewal are audited
(SPEC §14.12). In-process app, real SQLite, real audit writer. Time is moved by rewriting the token row's
`created_at`/`expires_at` (then reloading the runtime, as any write through the API does)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD
from sqlmodel import select

from agent_vault import crypto
from agent_vault.audit import list_records
from agent_vault.core import Core
from agent_vault.models import Token

DAY = timedelta(days=1)


def _login(api: httpx.Client, label: str) -> str:
    r = api.post("/v1/auth/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD, "label": label})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _aware(dt: datetime | None) -> datetime:
    assert dt is not None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _row(core: Core, token: str) -> Token:
    with core.store.read() as s:
        return s.exec(select(Token).where(Token.digest == crypto.digest(token))).one()


def _age(core: Core, token: str, *, made: timedelta, expires_in: timedelta) -> datetime:
    """Pretend the login was made `made` ago and now expires in `expires_in`; returns its created_at."""
    now = datetime.now(UTC)
    with core.store.write() as s:
        t = s.exec(select(Token).where(Token.digest == crypto.digest(token))).one()
        t.created_at, t.expires_at = now - made, now + expires_in
        s.add(t)
    core.runtime.reload(vaults=False)
    return now - made


def _me(api: httpx.Client, token: str) -> int:
    return api.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_used_login_outlives_30_days_and_an_idle_one_expires(core: Core, api: httpx.Client) -> None:
    used = _login(api, "laptop")
    created = _age(core, used, made=29 * DAY, expires_in=DAY)  # last use 29 days ago: one day left
    assert _me(api, used) == 200
    now = datetime.now(UTC)
    slid = _aware(_row(core, used).expires_at)
    assert abs(slid - (now + 30 * DAY)) < timedelta(minutes=1)  # idle clock restarted at this use
    assert slid > created + 30 * DAY  # it now lives past day 30 after the login
    principal = core.runtime.principal(crypto.digest(used))
    assert principal is not None and _aware(principal.expires_at) == slid  # the proxy sees it too
    assert _me(api, used) == 200
    assert _aware(_row(core, used).expires_at) == slid  # at most one write per period, not per request

    idle = _login(api, "forgotten")
    _age(core, idle, made=31 * DAY, expires_in=-DAY)  # never used for 30 days
    assert _me(api, idle) == 401
    assert _aware(_row(core, idle).expires_at) < datetime.now(UTC)  # a refused token is not revived


def test_no_login_outlives_365_days(core: Core, api: httpx.Client) -> None:
    old = _login(api, "old")
    created = _age(core, old, made=340 * DAY, expires_in=timedelta(hours=2))
    assert _me(api, old) == 200
    assert _aware(_row(core, old).expires_at) == created + 365 * DAY  # capped, not now + 30 days
    assert _me(api, old) == 200  # at the cap: answered without another write
    assert _aware(_row(core, old).expires_at) == created + 365 * DAY

    ancient = _login(api, "ancient")
    _age(core, ancient, made=365 * DAY + timedelta(minutes=1), expires_in=-timedelta(minutes=1))
    assert _me(api, ancient) == 401


def test_logout_and_session_renew_are_audited(core: Core, api: httpx.Client) -> None:
    token = _login(api, "to-log-out")
    login_id = _row(core, token).id
    assert api.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    sess = api.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 600})
    assert sess.status_code in (200, 201), sess.text
    sid, sess_token = sess.json()["id"], sess.json()["token"]
    r = api.post(f"/v1/sessions/{sid}/renew", json={"ttl_seconds": 3600})
    assert r.status_code == 200, r.text
    core.audit.flush(10)

    (out,) = list_records(core.store.engine, kind="auth.logout")
    assert out["actor"] == f"user:{OWNER_EMAIL}" and out["target"] == str(login_id)
    (renew,) = list_records(core.store.engine, kind="session.renew")
    assert renew["actor"] == f"user:{OWNER_EMAIL}" and renew["target"] == str(sid)
    assert renew["vault"] == "default" and renew["details"]["expires_at"] == r.json()["expires_at"]
    text = json.dumps([out, renew])
    assert token not in text and sess_token not in text and crypto.digest(token) not in text
