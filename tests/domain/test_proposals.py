"""Proposals over the in-process API (real SQLite store, real Core): validation, roles, lifecycle, links."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core
from sqlmodel import select
from starlette.testclient import TestClient

from agent_vault.api.app import create_app
from agent_vault.core import Core
from agent_vault.domain.proposals import expire_due
from agent_vault.models import AuditEvent, Credential, Proposal, utcnow

SECRET = "sk-proposal-secret-0123456789"
BASE = "http://127.0.0.1:14321"
ADMIN = "/v1/vaults/default/proposals"
APPROVE_1 = {"password": OWNER_PASSWORD, "credentials": {"STRIPE_KEY": SECRET}}


@pytest.fixture
def core(tmp_path: Path, db_url: str) -> Iterator[Core]:
    """On both backends (tests/conftest.py `db_url`)."""
    with make_core(tmp_path / "home", database_url=db_url) as c:
        yield c


@pytest.fixture
def api(core: Core) -> Iterator[TestClient]:
    """Logged in as the owner with a bearer token (the login cookie is dropped)."""
    app = create_app()
    app.state.core = core
    with TestClient(app, base_url=BASE) as c:
        c.headers["Authorization"] = f"Bearer {_login(c, OWNER_EMAIL, OWNER_PASSWORD)}"
        yield c


def _login(c: TestClient, email: str, password: str) -> str:
    r = c.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    c.cookies.clear()
    return str(r.json()["token"])


def _agent(api: TestClient, name: str = "ci-bot", role: str = "proxy") -> dict[str, str]:
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": name, "vaults": [{"vault": "default", "role": role}]},
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _user(api: TestClient, email: str, role: str) -> dict[str, str]:
    grants = [{"vault": "default", "role": role}]
    invite = {"password": OWNER_PASSWORD, "email": email, "role": "member", "vaults": grants}
    r = api.post("/v1/users/invites", json=invite)
    assert r.status_code == 201, r.text
    r = api.post(
        f"/v1/invites/{r.json()['token']}/accept",
        json={"password": "user-password-1"},
        headers={"Authorization": ""},
    )
    assert r.status_code == 201, r.text
    api.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _svc(name: str, host: str, key: str) -> dict[str, Any]:
    return {"action": "set", "name": name, "host": host, "auth": {"type": "bearer", "token": key}}


def _stripe(host: str = "api.stripe.com", key: str = "STRIPE_KEY", name: str = "stripe") -> dict[str, Any]:
    cred = {
        "action": "set",
        "key": key,
        "description": "test key",
        "obtain": "https://dashboard.example/keys",
    }
    return {"services": [_svc(name, host, key)], "credentials": [cred], "message": "Need Stripe for a test"}


def _propose(api: TestClient, hdr: dict[str, str], body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    r = api.post("/v1/proposals", json=body, headers=hdr)
    assert r.status_code == status, r.text
    return dict(r.json())


def _token(created: dict[str, Any]) -> str:
    m = re.fullmatch(
        r"http://127\.0\.0\.1:14321/ui/approve/default/(\d+)\?token=(av_appr_[A-Za-z0-9_-]{43})",
        created["approval_url"],
    )
    assert m and int(m.group(1)) == created["id"]
    return m.group(2)


def _audit(core: Core) -> list[dict[str, Any]]:
    core.audit.flush()
    with core.store.read() as s:
        return [json.loads(e.record) for e in s.exec(select(AuditEvent).order_by(AuditEvent.seq))]


def test_create_returns_link_stores_only_its_digest_and_ids_are_sequential(
    api: TestClient, core: Core
) -> None:
    bot = _agent(api)
    first = _propose(api, bot, _stripe())
    assert first["id"] == 1 and first["status"] == "pending" and first["vault"] == "default"
    assert "Proposal 1 created" in first["message"]
    token = _token(first)
    with core.store.read() as s:
        row = s.exec(select(Proposal)).one()
    assert row.approval_digest != token and token not in json.dumps(row.model_dump(), default=str)
    assert row.expires_at - row.created_at == timedelta(days=7)
    assert row.approval_expires_at is not None
    assert row.approval_expires_at - row.created_at == timedelta(hours=24)
    assert api.post(f"{ADMIN}/1/reject", json={"reason": "no"}).status_code == 200
    second = _propose(api, bot, _stripe(name="stripe-two"))
    assert second["id"] == 2  # never reused, even after the first one is closed
    kinds = [(r["kind"], r.get("target")) for r in _audit(core) if r["kind"].startswith("proposal.")]
    assert kinds == [("proposal.create", "1"), ("proposal.reject", "1"), ("proposal.create", "2")]


@pytest.mark.parametrize(
    "body",
    [
        {"credentials": [{"action": "set", "key": "K", "value": SECRET}]},
        {"services": [{**_svc("svc", "a.example.com", "K"), "auth": {"type": "bearer", "value": SECRET}}]},
        {"credentials": [{"key": "K"}], "value": SECRET},
    ],
)
def test_any_value_field_is_refused(api: TestClient, body: dict[str, Any]) -> None:
    r = api.post("/v1/proposals", json=body, headers=_agent(api))
    assert r.status_code == 400 and r.json()["error"] == "value_not_allowed"
    assert SECRET not in r.text
    assert api.get(ADMIN).json()["proposals"] == []


def test_references_limits_and_shape_are_checked(api: TestClient) -> None:
    bot = _agent(api)
    unknown = _stripe()
    unknown["credentials"] = []
    r = api.post("/v1/proposals", json=unknown, headers=bot)
    assert (
        r.status_code == 400
        and r.json()["error"] == "unknown_credential"
        and r.json()["keys"] == ["STRIPE_KEY"]
    )
    api.put("/v1/vaults/default/credentials/STRIPE_KEY", json={"value": SECRET})
    assert _propose(api, bot, unknown)["id"] == 1  # an existing key may be referenced without proposing it
    stray = _stripe()
    stray["credentials"].append({"key": "UNUSED_KEY"})
    r = api.post("/v1/proposals", json=stray, headers=bot)
    assert r.status_code == 422 and "UNUSED_KEY" in r.json()["message"]
    assert _propose(api, bot, {"credentials": [{"key": "UNUSED_KEY"}]})["id"] == 2  # credential-only is fine
    # SPEC §9: a body that is invalid on its own is 422 invalid_request, like malformed JSON or a bad id
    shape_failures: list[Any] = [
        {},
        {"credentials": [{"key": f"K{i}"} for i in range(11)]},
        {"credentials": [{"key": "K"}], "message": "x" * 2001},
        {"credentials": [{"key": "lower"}]},
        {"services": [{"action": "nuke", "name": "abc"}]},
        {"services": [{**_svc("bad", "*", "K")}], "credentials": [{"key": "K"}]},
        {"credentials": [{"key": "K"}, {"key": "K"}]},
        {"surprise": 1},
        ["not", "an", "object"],
    ]
    for bad in shape_failures:
        r = api.post("/v1/proposals", json=bad, headers=bot)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", (bad, r.text)
        assert r.json()["message"]
    r = api.post("/v1/proposals", content=b"{not json", headers={**bot, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert api.get("/v1/proposals/one", headers=bot).status_code == 422
    assert api.get("/v1/proposals", params={"status": "bogus"}, headers=bot).status_code == 422
    # checks against the vault's state are validation failures too (SPEC §9: 422)
    r = api.post(
        "/v1/proposals", json={"services": [{"action": "delete", "name": "missing-svc"}]}, headers=bot
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert len(api.get(ADMIN).json()["proposals"]) == 2


def test_twenty_first_pending_proposal_is_refused(api: TestClient) -> None:
    bot = _agent(api)
    for i in range(20):
        _propose(api, bot, {"credentials": [{"key": f"KEY_{i}"}]})
    r = api.post("/v1/proposals", json={"credentials": [{"key": "ONE_MORE"}]}, headers=bot)
    assert r.status_code == 429 and r.json()["error"] == "too_many_pending_proposals"
    api.post(f"{ADMIN}/1/reject", json={})
    assert _propose(api, bot, {"credentials": [{"key": "ONE_MORE"}]})["id"] == 21


def test_proxy_agents_see_only_their_own_proposals(api: TestClient, core: Core) -> None:
    bot, other, member_bot = _agent(api), _agent(api, "other-bot"), _agent(api, "lead-bot", role="member")
    _propose(api, bot, _stripe())
    _propose(api, other, {"credentials": [{"key": "OTHER_KEY"}]})
    assert [p["id"] for p in api.get("/v1/proposals", headers=bot).json()["proposals"]] == [1]
    assert api.get("/v1/proposals/2", headers=bot).status_code == 404
    assert api.get("/v1/proposals/1", headers=bot).json()["credentials"][0]["key"] == "STRIPE_KEY"
    assert [p["id"] for p in api.get("/v1/proposals", headers=member_bot).json()["proposals"]] == [1, 2]
    assert api.get(ADMIN, headers=bot).status_code == 403
    assert api.get(f"{ADMIN}/1", headers=bot).status_code == 403
    # a session minted by the agent acts for it: it sees the agent's proposals and the agent sees its own
    sess = api.post("/v1/sessions", json={"vault": "default"}, headers=bot).json()["token"]
    shdr = {"Authorization": f"Bearer {sess}"}
    made = _propose(api, shdr, {"credentials": [{"key": "FROM_SESSION"}]})
    assert [p["id"] for p in api.get("/v1/proposals", headers=shdr).json()["proposals"]] == [1, made["id"]]
    assert api.get(f"/v1/proposals/{made['id']}", headers=bot).status_code == 200
    assert api.get(f"/v1/proposals/{made['id']}", headers=other).status_code == 404


def test_approve_needs_a_human_with_the_right_role_and_step_up(api: TestClient, core: Core) -> None:
    bot = _agent(api, role="member")
    _propose(api, bot, _stripe())
    ok_body = {"password": OWNER_PASSWORD, "credentials": {"STRIPE_KEY": SECRET}}
    r = api.post(f"{ADMIN}/1/approve", json=ok_body, headers=bot)
    assert r.status_code == 403 and SECRET not in r.text
    assert api.post(f"{ADMIN}/1/reject", json={}, headers=bot).status_code == 403
    member = _user(api, "member@example.com", "member")
    r = api.post(f"{ADMIN}/1/approve", json={**ok_body, "password": "user-password-1"}, headers=member)
    assert r.status_code == 403 and "admin" in r.json()["message"]
    r = api.post(f"{ADMIN}/1/approve", json={**ok_body, "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["error"] == "step_up_failed"
    r = api.post(f"{ADMIN}/1/approve", json={"password": OWNER_PASSWORD})
    assert (
        r.status_code == 400 and r.json()["error"] == "missing_value" and r.json()["keys"] == ["STRIPE_KEY"]
    )
    r = api.post(f"{ADMIN}/1/approve", json={"password": OWNER_PASSWORD, "credentials": {"STRIPE_KEY": ""}})
    assert r.status_code == 422
    view = core.runtime.snapshot.vaults["default"]
    assert view.services == () and view.values == {}  # every refusal left nothing applied
    r = api.post(f"{ADMIN}/1/approve", json={**ok_body, "note": "ok for tests"})
    assert r.status_code == 200 and r.json() == {"id": 1, "status": "applied"} and SECRET not in r.text
    view = core.runtime.snapshot.vaults["default"]
    assert [s.name for s in view.services] == ["stripe"] and view.values == {"STRIPE_KEY": SECRET}
    got = api.get("/v1/proposals/1", headers=bot).json()
    assert (
        got["status"] == "applied" and got["review_note"] == "ok for tests" and SECRET not in json.dumps(got)
    )
    assert api.post(f"{ADMIN}/1/approve", json=ok_body).status_code == 409
    assert api.post(f"{ADMIN}/1/reject", json={}).status_code == 409
    # credential-only proposals need member, not admin
    _propose(api, bot, {"credentials": [{"key": "STRIPE_KEY", "description": "rotated"}, {"key": "NEW_KEY"}]})
    r = api.post(
        f"{ADMIN}/2/approve",
        headers=member,
        json={"password": "user-password-1", "credentials": {"NEW_KEY": "v-new"}},
    )
    assert r.status_code == 200, r.text
    with core.store.read() as s:
        rows = {c.key: c for c in s.exec(select(Credential))}
    assert rows["STRIPE_KEY"].description == "rotated" and rows["STRIPE_KEY"].version == 1
    records = _audit(core)
    approvals = [r for r in records if r["kind"] == "proposal.approve"]
    assert approvals[0]["details"]["services"] == ["stripe"]
    assert approvals[0]["details"]["credentials"] == ["STRIPE_KEY"]
    assert SECRET not in json.dumps(records) and OWNER_PASSWORD not in json.dumps(records)


def test_apply_is_one_transaction_and_upserts_by_name(api: TestClient, core: Core) -> None:
    for name, key in (("alpha", "A_KEY"), ("beta", "B_KEY"), ("gamma", "A_KEY")):
        api.put(f"/v1/vaults/default/credentials/{key}", json={"value": f"v-{key}"})
        svc = {k: v for k, v in _svc(name, f"{name}.example.com", key).items() if k != "action"}
        r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
        assert r.status_code == 201
    bot = _agent(api)
    services = [_svc("beta", "beta2.example.com", "B_KEY"), {"action": "delete", "name": "gamma"}]
    body = {
        "services": [*services, _svc("delta", "delta.example.com", "D_KEY")],
        "credentials": [{"key": "D_KEY"}],
    }
    _propose(api, bot, body)
    full = api.get(f"{ADMIN}/1").json()
    effects = {c["name"]: c["effect"] for c in full["changes"]["services"]}
    assert effects == {"beta": "update", "gamma": "delete", "delta": "add"}
    assert full["missing_values"] == ["D_KEY"] and full["required_role"] == "admin"
    # the state changes under the proposal: B_KEY disappears -> approval fails and applies nothing
    assert api.delete("/v1/vaults/default/credentials/B_KEY", params={"force": "true"}).status_code == 204
    r = api.post(f"{ADMIN}/1/approve", json={"password": OWNER_PASSWORD, "credentials": {"D_KEY": "v-d"}})
    assert r.status_code == 400 and r.json()["error"] == "unknown_credential"
    view = core.runtime.snapshot.vaults["default"]
    assert [s.name for s in view.services] == ["alpha", "beta", "gamma"] and "D_KEY" not in view.values
    api.put("/v1/vaults/default/credentials/B_KEY", json={"value": "v-b"})
    r = api.post(f"{ADMIN}/1/approve", json={"password": OWNER_PASSWORD, "credentials": {"D_KEY": "v-d"}})
    assert r.status_code == 200, r.text
    view = core.runtime.snapshot.vaults["default"]
    assert [(s.name, s.host) for s in view.services] == [
        ("alpha", "alpha.example.com"),
        ("beta", "beta2.example.com"),
        ("delta", "delta.example.com"),
    ]
    assert view.values["D_KEY"] == "v-d"


def test_reject_stores_the_reason_for_the_agent(api: TestClient, core: Core) -> None:
    bot = _agent(api)
    _propose(api, bot, _stripe())
    member = _user(api, "member@example.com", "member")
    r = api.post(f"{ADMIN}/1/reject", json={"reason": "use the sandbox account"}, headers=member)
    assert r.json() == {"id": 1, "status": "rejected"}
    got = api.get("/v1/proposals/1", headers=bot).json()
    assert got["status"] == "rejected" and got["review_note"] == "use the sandbox account"
    assert api.post(f"{ADMIN}/1/approve", json=APPROVE_1).status_code == 409
    assert core.runtime.snapshot.vaults["default"].services == ()
    assert api.get(ADMIN, params={"status": "rejected"}).json()["proposals"][0]["id"] == 1
    assert api.get(ADMIN, params={"status": "bogus"}).status_code == 422


def test_pending_proposals_expire_after_seven_days(api: TestClient, core: Core) -> None:
    bot = _agent(api)
    _propose(api, bot, _stripe())
    _propose(api, bot, {"credentials": [{"key": "FRESH"}]})
    assert expire_due(core) == 0
    with core.store.write() as s:
        row = s.exec(select(Proposal).where(Proposal.seq == 1)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
    assert api.get("/v1/proposals/1", headers=bot).json()["status"] == "expired"  # lazily, on read
    assert expire_due(core) == 0
    assert api.post(f"{ADMIN}/1/approve", json=APPROVE_1).status_code == 409
    assert api.get("/v1/proposals/2", headers=bot).json()["status"] == "pending"
    with core.store.write() as s:
        row = s.exec(select(Proposal).where(Proposal.seq == 2)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
    assert expire_due(core) == 1  # the periodic sweep
    assert [r["target"] for r in _audit(core) if r["kind"] == "proposal.expire"] == ["1", "2"]


def test_approval_link_shows_but_never_approves(api: TestClient, core: Core) -> None:
    bot = _agent(api)
    token1 = _token(_propose(api, bot, _stripe()))
    token2 = _token(_propose(api, bot, {"credentials": [{"key": "OTHER"}]}))
    anon = {"Authorization": ""}
    r = api.get(f"{ADMIN}/1", params={"token": token1}, headers=anon)
    assert r.status_code == 200 and r.json()["missing_values"] == ["STRIPE_KEY"]
    assert api.get(f"{ADMIN}/1", headers=anon).status_code == 401
    assert api.get(f"{ADMIN}/2", params={"token": token1}, headers=anon).status_code == 401  # bound to its id
    assert api.get(f"{ADMIN}/1", params={"token": token1}, headers=bot).status_code == 200
    for hdr in (anon, bot):
        r = api.post(
            f"{ADMIN}/1/approve",
            params={"token": token1},
            headers=hdr,
            json={"password": OWNER_PASSWORD, "credentials": {"STRIPE_KEY": SECRET}},
        )
        assert r.status_code in (401, 403)
    with core.store.write() as s:
        row = s.exec(select(Proposal).where(Proposal.seq == 2)).one()
        row.approval_expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
    r = api.get(f"{ADMIN}/2", params={"token": token2}, headers=anon)
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert api.get(f"{ADMIN}/2").json()["status"] == "pending"  # members still review it
    api.post(f"{ADMIN}/1/reject", json={})
    assert api.get(f"{ADMIN}/1", params={"token": token1}, headers=anon).status_code == 401  # used link


def test_cookie_writes_need_a_matching_origin(api: TestClient, core: Core) -> None:
    bot = _agent(api)
    _propose(api, bot, _stripe())
    _propose(api, bot, {"credentials": [{"key": "OTHER"}]})
    browser = TestClient(api.app, base_url=BASE)
    r = browser.post("/v1/auth/login", json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD})
    assert r.status_code == 200 and browser.cookies.get("av_ui")
    assert browser.get(f"{ADMIN}/1").status_code == 200  # reads with the cookie
    body = {"password": OWNER_PASSWORD, "credentials": {"STRIPE_KEY": SECRET}}
    assert browser.post(f"{ADMIN}/1/approve", json=body).status_code == 403
    for origin in ("http://evil.example", "https://127.0.0.1:14321.evil", "null"):
        assert browser.post(f"{ADMIN}/1/approve", json=body, headers={"Origin": origin}).status_code == 403
        assert browser.post(f"{ADMIN}/2/reject", json={}, headers={"Origin": origin}).status_code == 403
    assert api.get(f"{ADMIN}/1").json()["status"] == "pending"
    r = browser.post(f"{ADMIN}/1/approve", json=body, headers={"Origin": BASE})
    assert r.status_code == 200, r.text
    assert browser.post(f"{ADMIN}/2/reject", json={}, headers={"Origin": BASE}).status_code == 200


def test_approval_page_is_self_contained_and_locked_down(api: TestClient) -> None:
    r = api.get(
        "/ui/approve/default/1", params={"token": "av_appr_" + "x" * 43}, headers={"Authorization": ""}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([A-Za-z0-9_-]+)'", csp)
    assert nonce and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
    page = r.text
    assert page.count(f'nonce="{nonce.group(1)}"') == 2  # the one <style> and the one <script>
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers (CSP would block them)
    assert "innerHTML" not in page and "av_appr_" not in page
    again = api.get("/ui/approve/default/1")
    assert again.headers["content-security-policy"] != csp  # a fresh nonce per response
    assert api.get("/ui/approve/Bad..Name/1").status_code == 404


def _risky_update(api: TestClient) -> dict[str, Any]:
    """An existing `beta` (port 443, GET only) and an agent's update to it: any port, all methods, plain
    http allowed and responses unredacted; plus a new `gamma` on any port. Returns the full proposal."""
    api.put("/v1/vaults/default/credentials/B_KEY", json={"value": "v-b"})
    beta = {"name": "beta", "host": "beta.example.com", "port": 443, "methods": ["GET"]}
    beta["auth"] = {"type": "bearer", "token": "B_KEY"}
    r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": beta})
    assert r.status_code == 201, r.text
    risky = {**_svc("beta", "beta.example.com", "B_KEY"), "allow_http": True, "redact_response": False}
    body = {"services": [risky, _svc("gamma", "gamma.example.com", "B_KEY")], "message": "widen beta"}
    _propose(api, _agent(api), body)
    return dict(api.get(f"{ADMIN}/1").json())


def test_the_terminal_review_shows_what_an_update_changes_and_every_warning(api: TestClient) -> None:
    """`proposal show` / the approve preview (cli.proposals.describe) print the server's warnings, each
    field an update changes (before -> after), and a null port as "any port"; the JSON carries them."""
    from agent_vault.cli.proposals import describe

    full = _risky_update(api)
    beta = full["changes"]["services"][0]
    assert beta["effect"] == "update" and beta["before"]["port"] == 443 and len(beta["warnings"]) == 2
    text = describe(full)
    lines = text.splitlines()
    for w in beta["warnings"]:
        assert f"    warning: beta: {w}" in lines, text
    assert "      port: 443 -> any port" in lines, text
    assert "      methods: GET -> all methods" in lines, text
    assert "      allow_http: no -> yes" in lines, text
    assert "      redact_response: default (on when it sends credentials) -> no" in lines, text
    assert not any(line.strip().startswith(("host:", "auth:", "path:")) for line in lines)  # unchanged
    assert any(line.startswith("  + gamma (add): host gamma.example.com, any port, path /") for line in lines)
    assert "v-b" not in text


def test_a_stale_proposal_says_so_and_cannot_be_approved(api: TestClient, core: Core) -> None:
    """A service a pending proposal deletes was deleted directly: every view marks the item out of date
    and approving is a 409 that says to reject the proposal (not a 400 blaming the arguments)."""
    api.put("/v1/vaults/default/credentials/S_KEY", json={"value": "v-s"})
    svc = {k: v for k, v in _svc("stripe", "api.stripe.com", "S_KEY").items() if k != "action"}
    api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
    bot = _agent(api)
    _propose(api, bot, {"services": [{"action": "delete", "name": "stripe"}]})
    assert api.get(f"{ADMIN}/1").json()["out_of_date"] == []
    assert api.get("/v1/proposals/1", headers=bot).json()["out_of_date"] == []
    r = api.request("DELETE", "/v1/vaults/default/services/stripe", json={"password": OWNER_PASSWORD})
    assert r.status_code == 204, r.text
    full = api.get(f"{ADMIN}/1").json()
    assert full["out_of_date"] == ["service stripe no longer exists"]
    assert full["changes"]["services"][0]["out_of_date"] == "service stripe no longer exists"
    assert api.get("/v1/proposals/1", headers=bot).json()["out_of_date"] == [
        "service stripe no longer exists"
    ]
    r = api.post(f"{ADMIN}/1/approve", json={"password": OWNER_PASSWORD})
    assert r.status_code == 409 and r.json()["error"] == "conflict", r.text
    assert "out of date" in r.json()["message"] and "stripe" in r.json()["message"]
    assert "agent-vault vault proposal reject 1" in r.json()["hint"]
    from agent_vault.cli.proposals import describe

    assert "    OUT OF DATE: service stripe no longer exists" in describe(full).splitlines()
    assert api.post(f"{ADMIN}/1/reject", json={}).status_code == 200
    assert api.get(f"{ADMIN}/1").json()["out_of_date"] == []  # decided: nothing left to go stale


_FAKE_DOM = r"""
"use strict";
class FakeNode {
  constructor(tag) { this.tag = tag; this.children = []; this._t = ""; this.dataset = {}; this.className = "";
    this.hidden = false; }
  set textContent(v) { this._t = v; }
  get textContent() { return this._t; }
  set innerHTML(v) { throw new Error("innerHTML used"); }
  append(...xs) { this.children.push(...xs); }
  replaceChildren(...xs) { this.children = []; this.append(...xs); }
  addEventListener() {}
}
const nodes = {};
const DATA = JSON.parse(process.argv[2]);
globalThis.document = {
  body: {dataset: {vault: "default", id: String(DATA.id)}},
  getElementById: (i) => (nodes[i] = nodes[i] || new FakeNode("#" + i)),
  createElement: (t) => new FakeNode(t),
  querySelectorAll: () => [],
};
globalThis.location = {search: "", pathname: "/ui/approve/default/" + DATA.id};
globalThis.history = {replaceState() {}};
globalThis.fetch = async (path) => ({
  ok: true, status: 200,
  json: async () => (path.startsWith("/v1/auth/me") ? {kind: "user", name: "owner"} : DATA),
});
const shown = (n) =>
  [n.textContent, n.className, ...n.children.filter((c) => typeof c === "object").map(shown)];
process.on("exit", () => process.stdout.write(JSON.stringify(Object.values(nodes).map(shown))));
"""


def _render_approval_page(api: TestClient, data: dict[str, Any], tmp_path: Path) -> str:
    """The approval page's own script run on `data` (node, a fake DOM that refuses HTML sinks): every
    text it shows, flattened, with each node's class as `[class] text` lines."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script cannot be run")
    page = api.get(f"/ui/approve/default/{data['id']}", headers={"Authorization": ""}).text
    m = re.search(r"<script nonce=\"[^\"]+\">(.*)</script>", page, re.S)
    assert m is not None
    js = tmp_path / "page.js"
    js.write_text(_FAKE_DOM + m.group(1))
    cp = subprocess.run(
        [node, str(js), json.dumps(data)], capture_output=True, text=True, timeout=30, check=False
    )
    assert cp.returncode == 0, cp.stderr

    def walk(n: Any) -> list[str]:
        own = [f"[{n[1] or ''}] {n[0]}"] if n[0] else []
        return own + [line for child in n[2:] for line in walk(child)]

    return "\n".join(line for root in json.loads(cp.stdout) for line in walk(root))


def test_the_approval_page_shows_warnings_and_out_of_date_items(api: TestClient, tmp_path: Path) -> None:
    full = _risky_update(api)
    shown = _render_approval_page(api, full, tmp_path)
    for w in full["changes"]["services"][0]["warnings"]:
        assert f"[warn] Warning: {w}" in shown.splitlines(), shown
    assert "Current definition:" in shown  # the before stays next to the new definition
    api.post(f"{ADMIN}/1/reject", json={})
    r = api.request("DELETE", "/v1/vaults/default/services/beta", json={"password": OWNER_PASSWORD})
    assert r.status_code == 204, r.text
    api.put("/v1/vaults/default/credentials/G_KEY", json={"value": "v-g"})
    gamma = {k: v for k, v in _svc("gamma", "gamma.example.com", "G_KEY").items() if k != "action"}
    api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": gamma})
    _propose(api, _agent(api, "second-bot"), {"services": [{"action": "delete", "name": "gamma"}]})
    api.request("DELETE", "/v1/vaults/default/services/gamma", json={"password": OWNER_PASSWORD})
    stale = api.get(f"{ADMIN}/2").json()
    shown = _render_approval_page(api, stale, tmp_path)
    assert "[stale] Out of date: service gamma no longer exists" in shown.splitlines(), shown
    assert any(
        line.startswith("[stale] Out of date: service gamma no longer exists. Approving would fail")
        for line in shown.splitlines()
    ), shown
