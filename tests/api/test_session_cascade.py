"""Child sessions follow their parent (QA: revoking a session left the sessions it minted working).

Over the in-process API on both backends (real store, real Core, real snapshot): a session minted by a
session records its parent; revoking, shortening or deleting the parent does the same to every session
it minted, transitively, and the proxy's per-request recheck refuses them on the very next request. A
second revoke is 404 with no second audit record.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core
from sqlmodel import col, select
from starlette.testclient import TestClient

from agent_vault import crypto
from agent_vault.api.app import create_app
from agent_vault.core import Core
from agent_vault.errors import ProxyAuthRequired
from agent_vault.models import AuditEvent, Token
from agent_vault.proxy.decide import authenticate, recheck

BASE = "http://127.0.0.1:14321"


@pytest.fixture
def core(tmp_path: Path, db_url: str) -> Iterator[Core]:
    """On both backends (tests/conftest.py `db_url`)."""
    with make_core(tmp_path / "home", database_url=db_url) as c:
        yield c


@pytest.fixture
def api(core: Core) -> Iterator[TestClient]:
    """Logged in as the owner with a bearer token."""
    app = create_app()
    app.state.core = core
    with TestClient(app, base_url=BASE) as c:
        r = c.post("/v1/auth/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
        c.cookies.clear()
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _agent(api: TestClient, name: str = "ci-bot") -> dict[str, str]:
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": name, "vaults": [{"vault": "default", "role": "proxy"}]},
    )
    assert r.status_code == 201, r.text
    return _bearer(r.json()["token"])


def _mint(api: TestClient, hdr: dict[str, str], **body: Any) -> dict[str, Any]:
    r = api.post("/v1/sessions", json=body, headers=hdr)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _chain(api: TestClient, hdr: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Parent P (the agent's), its child C, and C's child G (each narrower than the one that minted it)."""
    parent = _mint(api, hdr, ttl_seconds=3600, label="parent")
    child = _mint(api, _bearer(parent["token"]), only_methods=["GET", "POST"], label="child")
    grandchild = _mint(api, _bearer(child["token"]), only_methods=["GET"], label="grandchild")
    return parent, child, grandchild


def _proxy_identity(core: Core, token: str) -> Any:
    """What the proxy holds for an open connection of `token` (authenticated once, rechecked per request)."""
    basic = base64.b64encode(f"{token}:default".encode()).decode()
    return authenticate(core.runtime.snapshot, f"Basic {basic}", None)


def _records(core: Core, kind: str) -> list[dict[str, Any]]:
    core.audit.flush()
    with core.store.read() as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.kind == kind).order_by(col(AuditEvent.seq)))
        return [json.loads(e.record) for e in rows]


def test_revoking_a_session_revokes_every_session_it_minted(core: Core, api: TestClient) -> None:
    hdr = _agent(api)
    parent, child, grandchild = _chain(api, hdr)
    bystander = _mint(api, hdr, label="unrelated")
    open_conns = {n: _proxy_identity(core, s["token"]) for n, s in (("child", child), ("grand", grandchild))}
    listed = {s["id"]: s for s in api.get("/v1/sessions", params={"vault": "default"}).json()["sessions"]}
    assert listed[child["id"]]["parent_id"] == parent["id"]
    assert listed[grandchild["id"]]["parent_id"] == child["id"]
    assert listed[parent["id"]]["parent_id"] is None

    assert api.delete(f"/v1/sessions/{parent['id']}").status_code == 204  # a human revokes P

    for s in (parent, child, grandchild):
        assert api.get("/v1/discover", headers=_bearer(s["token"])).status_code == 401, s["label"]
    for ident in open_conns.values():  # the proxy's very next request on an open connection
        with pytest.raises(ProxyAuthRequired):
            recheck(core.runtime.snapshot, ident)
    with pytest.raises(ProxyAuthRequired):
        _proxy_identity(core, child["token"])
    assert api.get("/v1/discover", headers=_bearer(bystander["token"])).status_code == 200
    live = {s["id"] for s in api.get("/v1/sessions", params={"vault": "default"}).json()["sessions"]}
    assert live == {bystander["id"]}
    [rec] = _records(core, "session.revoke")
    assert rec["target"] == str(parent["id"])
    assert rec["details"]["cascade"] == [child["id"], grandchild["id"]]


def test_revoking_a_child_leaves_its_parent_and_the_agent_revoke_kills_grandchildren(
    core: Core, api: TestClient
) -> None:
    hdr = _agent(api, "tree-bot")
    parent, child, grandchild = _chain(api, hdr)
    assert api.delete(f"/v1/sessions/{child['id']}").status_code == 204
    assert api.get("/v1/discover", headers=_bearer(parent["token"])).status_code == 200
    assert api.get("/v1/discover", headers=_bearer(grandchild["token"])).status_code == 401
    again = _chain(api, hdr)
    ident = _proxy_identity(core, again[2]["token"])
    assert api.post("/v1/agents/tree-bot/revoke").status_code == 200
    for s in again:
        assert api.get("/v1/discover", headers=_bearer(s["token"])).status_code == 401
    with pytest.raises(ProxyAuthRequired):
        recheck(core.runtime.snapshot, ident)
    # deleting the agent deletes the whole tree (children share its tokens' owner), no half-written rows
    assert api.request("DELETE", "/v1/agents/tree-bot").status_code == 204
    with core.store.read() as db:
        assert list(db.exec(select(Token).where(Token.kind == "session"))) == []


def test_a_second_revoke_is_not_found_and_audited_once(core: Core, api: TestClient) -> None:
    hdr = _agent(api, "twice-bot")
    sess = _mint(api, hdr)
    assert api.delete(f"/v1/sessions/{sess['id']}", headers=hdr).status_code == 204
    for who in (hdr, api.headers):
        r = api.delete(f"/v1/sessions/{sess['id']}", headers=dict(who))
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found" and "already revoked" in r.json()["message"]
    parent, child, _grandchild = _chain(api, hdr)
    api.delete(f"/v1/sessions/{parent['id']}")
    r = api.delete(f"/v1/sessions/{child['id']}")  # revoked with its parent: nothing left to revoke
    assert r.status_code == 404 and "already revoked" in r.json()["message"]
    assert [r["target"] for r in _records(core, "session.revoke")] == [str(sess["id"]), str(parent["id"])]


def _expiry(core: Core, session_id: int) -> datetime:
    with core.store.read() as s:
        row = s.get(Token, session_id)
    assert row is not None and row.expires_at is not None
    return row.expires_at


def test_a_child_never_outlives_its_parent_across_renewals(core: Core, api: TestClient) -> None:
    hdr = _agent(api, "renew-bot")
    parent, child, grandchild = _chain(api, hdr)
    # the creator renews the child for a week: capped at the parent's expiry
    renewed = api.post(f"/v1/sessions/{child['id']}/renew", json={"ttl_seconds": 7 * 86400}, headers=hdr)
    assert renewed.status_code == 200, renewed.text
    assert _expiry(core, child["id"]) == _expiry(core, parent["id"])
    # shortening the parent shortens every session it minted (its expiry ends them as revocation does)
    r = api.post(f"/v1/sessions/{parent['id']}/renew", json={"ttl_seconds": 300}, headers=hdr)
    assert r.status_code == 200, r.text
    end = _expiry(core, parent["id"])
    assert end < datetime.now(UTC) + timedelta(seconds=301)
    for s in (child, grandchild):
        assert _expiry(core, s["id"]) <= end
        p = core.runtime.snapshot.principals[crypto.digest(s["token"])]
        assert p.expires_at is not None and p.expires_at <= end
