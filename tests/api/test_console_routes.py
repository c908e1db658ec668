"""The JSON routes the web console needs (issue #15): catalog, invites, own login sessions, vault
dashboard counts, the logs host filter and cursor polling, CA rotation. In-process app, real SQLite,
real audit writer; the proxy side of CA rotation is proven end to end in tests/e2e/test_ca_rotate.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD

from agent_vault import crypto, keys
from agent_vault.audit import admin_record, list_records, proxy_record, utc_ts
from agent_vault.catalog import load_catalog
from agent_vault.core import Core
from agent_vault.models import InstanceState, Invite, Token

MEMBER_PW = "member-password-123"


def _flush(core: Core) -> None:
    core.audit.flush(10)


def _invite(api: httpx.Client, email: str, role: str = "member") -> dict[str, Any]:
    r = api.post(
        "/v1/users/invites",
        json={"password": OWNER_PASSWORD, "email": email, "role": role, "vaults": [{"vault": "default"}]},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _member(api: httpx.Client, email: str = "dev@example.com") -> str:
    """A member user's login token (invited, accepted)."""
    token = _invite(api, email)["token"]
    r = api.post(f"/v1/invites/{token}/accept", json={"password": MEMBER_PW})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _agent(api: httpx.Client, name: str = "ci-bot") -> str:
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": name, "vaults": [{"vault": "default", "role": "member"}]},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(api: httpx.Client, label: str = "") -> str:
    r = api.post(
        "/v1/auth/login",
        json={"email": OWNER_EMAIL, "password": OWNER_PASSWORD, "label": label},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


# -- catalog ---------------------------------------------------------------------------------------


def test_catalog_is_public_and_matches_the_cli_data(api: httpx.Client) -> None:
    api.cookies.clear()
    r = api.get("/v1/catalog", headers={"Authorization": ""})
    assert r.status_code == 200
    services = r.json()["services"]
    assert [s["id"] for s in services] == [e.id for e in load_catalog()]
    github = next(s for s in services if s["id"] == "github")
    assert set(github) == {"id", "name", "description", "host", "path", "auth", "suggested_keys"}
    assert github["host"] == "api.github.com" and github["path"] == "/"
    assert github["auth"] == {"type": "bearer", "token": "GITHUB_TOKEN"}
    assert github["suggested_keys"] == ["GITHUB_TOKEN"]
    anthropic = next(s for s in services if s["id"] == "anthropic")
    assert anthropic["auth"]["type"] == "api-key" and anthropic["auth"]["header"].lower() == "x-api-key"


# -- invites ---------------------------------------------------------------------------------------


def test_invites_list_pending_only_without_tokens_and_revoke(api: httpx.Client, core: Core) -> None:
    first = _invite(api, "a@example.com")
    second = _invite(api, "b@example.com", role="owner")
    _member(api, "c@example.com")  # accepted: not pending any more
    with core.store.write() as s:  # an expired one is not pending either
        s.add(
            Invite(
                digest=crypto.digest(crypto.mint_token("av_inv_")),
                email="old@example.com",
                expires_at=datetime.now(UTC) - timedelta(minutes=1),
            )
        )
    r = api.get("/v1/users/invites")
    assert r.status_code == 200
    invites = r.json()["invites"]
    assert [i["email"] for i in invites] == ["a@example.com", "b@example.com"]
    assert invites[1]["role"] == "owner" and invites[0]["vaults"] == [{"vault": "default", "role": "proxy"}]
    assert {"id", "email", "role", "vaults", "created_at", "expires_at"} <= set(invites[0])
    for inv in (first, second):
        assert inv["token"] not in r.text and crypto.digest(inv["token"]) not in r.text
    iid = invites[0]["id"]
    assert api.delete(f"/v1/users/invites/{iid}").status_code == 204
    assert [i["email"] for i in api.get("/v1/users/invites").json()["invites"]] == ["b@example.com"]
    again = api.delete(f"/v1/users/invites/{iid}")
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    accepted = api.post(f"/v1/invites/{first['token']}/accept", json={"password": MEMBER_PW})
    assert accepted.status_code == 404  # the revoked URL stops working at once
    _flush(core)
    rec = list_records(core.store.engine, kind="user.invite_revoke")
    assert [(x["target"], x["actor"]) for x in rec] == [("a@example.com", f"user:{OWNER_EMAIL}")]
    assert first["token"] not in str(rec)


def test_invites_are_owner_only(api: httpx.Client) -> None:
    member, agent = _member(api), _agent(api)
    iid = api.get("/v1/users/invites").json()["invites"] or [{"id": 1}]
    for token in (member, agent):
        assert api.get("/v1/users/invites", headers=_bearer(token)).status_code == 403
        r = api.delete(f"/v1/users/invites/{iid[0]['id']}", headers=_bearer(token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    for bad in ("0", "x", str(2**63)):
        r = api.delete(f"/v1/users/invites/{bad}")
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"


# -- own login sessions ----------------------------------------------------------------------------


def test_auth_sessions_lists_own_logins_and_marks_the_current_one(api: httpx.Client, core: Core) -> None:
    laptop = _login(api, "laptop")
    member = _member(api)
    r = api.get("/v1/auth/sessions")
    assert r.status_code == 200
    sessions = r.json()["sessions"]
    assert len(sessions) == 2  # the fixture's login and "laptop"; never the member's
    assert [s["current"] for s in sessions].count(True) == 1
    assert {s["label"] for s in sessions} == {"", "laptop"}
    assert set(sessions[0]) == {"id", "label", "created_at", "expires_at", "current"}
    assert laptop not in r.text and crypto.digest(laptop) not in r.text
    from_laptop = api.get("/v1/auth/sessions", headers=_bearer(laptop)).json()["sessions"]
    assert [s["label"] for s in from_laptop if s["current"]] == ["laptop"]
    laptop_id = next(s["id"] for s in sessions if s["label"] == "laptop")
    # another user's login: 404 (not revealed), and it stays valid
    with core.store.read() as s:
        member_id = next(t.id for t in s.query(Token).filter(Token.kind == "user") if t.user_id != 1)
    assert api.delete(f"/v1/auth/sessions/{member_id}").status_code == 404
    assert api.get("/v1/auth/me", headers=_bearer(member)).status_code == 200
    assert api.delete(f"/v1/auth/sessions/{laptop_id}", headers=_bearer(member)).status_code == 404
    # revoke my other login: refused at the very next request
    assert api.delete(f"/v1/auth/sessions/{laptop_id}").status_code == 204
    assert api.get("/v1/auth/me", headers=_bearer(laptop)).status_code == 401
    assert api.delete(f"/v1/auth/sessions/{laptop_id}").status_code == 404
    assert [s["label"] for s in api.get("/v1/auth/sessions").json()["sessions"]] == [""]
    _flush(core)
    rec = list_records(core.store.engine, kind="auth.revoke")
    assert [x["target"] for x in rec] == [str(laptop_id)]


def test_auth_sessions_refuse_agents_and_session_tokens(api: httpx.Client) -> None:
    agent = _agent(api)
    sess = api.post("/v1/sessions", json={"vault": "default"}, headers=_bearer(agent)).json()["token"]
    own = api.get("/v1/auth/sessions").json()["sessions"][0]["id"]
    for token in (agent, sess):
        r = api.get("/v1/auth/sessions", headers=_bearer(token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        assert api.delete(f"/v1/auth/sessions/{own}", headers=_bearer(token)).status_code == 403
    assert api.get("/v1/auth/me").status_code == 200


def test_cookie_revocation_needs_our_origin_and_clears_the_cookie(api: httpx.Client) -> None:
    token = _login(api, "browser")
    api.cookies.clear()
    sid = next(s["id"] for s in api.get("/v1/auth/sessions").json()["sessions"] if s["label"] == "browser")
    cookie = {"Authorization": "", "Cookie": f"av_ui={token}"}
    r = api.delete(f"/v1/auth/sessions/{sid}", headers=cookie)  # no Origin: CSRF guard
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = api.delete(f"/v1/auth/sessions/{sid}", headers={**cookie, "Origin": "http://evil.example"})
    assert r.status_code == 403
    assert api.get("/v1/auth/me", headers=_bearer(token)).status_code == 200  # nothing revoked
    r = api.delete(f"/v1/auth/sessions/{sid}", headers={**cookie, "Origin": "http://127.0.0.1:14321"})
    assert r.status_code == 204
    assert 'av_ui=""' in r.headers.get("set-cookie", "") and "Max-Age=0" in r.headers["set-cookie"]
    assert api.get("/v1/auth/me", headers=_bearer(token)).status_code == 401


def test_cookie_invite_revocation_needs_our_origin(api: httpx.Client) -> None:
    _invite(api, "x@example.com")
    iid = api.get("/v1/users/invites").json()["invites"][0]["id"]
    owner = api.headers["Authorization"].removeprefix("Bearer ")
    cookie = {"Authorization": "", "Cookie": f"av_ui={owner}"}
    assert api.delete(f"/v1/users/invites/{iid}", headers=cookie).status_code == 403
    assert len(api.get("/v1/users/invites").json()["invites"]) == 1
    r = api.delete(f"/v1/users/invites/{iid}", headers={**cookie, "Origin": "http://127.0.0.1:14321"})
    assert r.status_code == 204


# -- vault dashboard counts ------------------------------------------------------------------------


def _proxy(
    vault: str | None,
    decision: str,
    status: int | None,
    *,
    host: str = "api.example.com",
    ago: timedelta = timedelta(0),
    error: str | None = None,
    kind: Literal["proxy.request", "proxy.tunnel"] = "proxy.request",
) -> dict[str, Any]:
    return proxy_record(
        kind=kind,
        actor="agent:ci-bot",
        vault=vault,
        decision=decision,
        scheme="https",
        host=host,
        port=443,
        method="GET",
        path="/x",
        status=status,
        error=error,
        ts=utc_ts(datetime.now(UTC) - ago),
    )


def test_vault_counts_cover_the_last_hour_of_this_vault(api: httpx.Client, core: Core) -> None:
    api.post("/v1/vaults", json={"name": "other"}).raise_for_status()
    before = api.get("/v1/vaults/default").json()
    assert before["counts"] == {
        "services": 0,
        "credentials": 0,
        "pending_proposals": 0,
        "requests_last_hour": 0,
        "denied_last_hour": 0,
        "errors_last_hour": 0,
    }
    old = timedelta(hours=2)
    for rec in (
        _proxy("default", "injected", 200),
        _proxy("default", "injected", 503),  # upstream 5xx: an error
        _proxy("default", "error", 502, error="upstream_unreachable"),
        _proxy("default", "denied", 403, error="service_not_allowed"),
        _proxy("default", "tunnel", None, kind="proxy.tunnel"),
        _proxy("default", "injected", 500, ago=old),  # older than an hour
        _proxy("default", "denied", 403, ago=old),
        _proxy("other", "denied", 403),  # another vault
        admin_record("credential.set", "user:x", vault="default", target="K"),  # not a proxied request
    ):
        assert core.audit.submit(rec)
    agent = _agent(api)
    r = api.post(
        "/v1/proposals",
        json={"credentials": [{"action": "set", "key": "NEW_KEY"}], "message": "m"},
        headers={**_bearer(agent), "X-Vault": "default"},
    )
    assert r.status_code == 201, r.text
    _flush(core)
    counts = api.get("/v1/vaults/default").json()["counts"]
    assert counts["requests_last_hour"] == 5
    assert counts["denied_last_hour"] == 1
    assert counts["errors_last_hour"] == 2
    assert counts["pending_proposals"] == 1
    other = api.get("/v1/vaults/other").json()["counts"]
    assert (other["requests_last_hour"], other["denied_last_hour"], other["pending_proposals"]) == (1, 1, 0)
    # the traffic counts summarise the request log: a proxy-role caller (no log access) does not get them
    r = api.post(
        "/v1/agents",
        json={
            "password": OWNER_PASSWORD,
            "name": "proxy-bot",
            "vaults": [{"vault": "default", "role": "proxy"}],
        },
    )
    proxy_only = api.get("/v1/vaults/default", headers=_bearer(r.json()["token"])).json()["counts"]
    assert proxy_only == {"services": 0, "credentials": 0, "pending_proposals": 1}
    assert api.get("/v1/vaults/default/logs", headers=_bearer(r.json()["token"])).status_code == 403


def test_vault_counts_read_only_the_window_through_indexes(core: Core) -> None:
    """The query plan: the window's first seq from the ts index, then one range of the vault index
    (`vault = ? AND rowid >= ?`): the cost follows the last hour's records, never the history."""
    from sqlalchemy.dialects import sqlite

    from agent_vault.audit import query

    stmt = query.window_counts_stmt("default", 1, utc_ts())
    sql = str(stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    first = str(
        query.window_start_stmt(utc_ts()).compile(
            dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
        )
    )
    with core.store.engine.connect() as conn:
        plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        start = " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + first))
    assert "ix_audit_events_vault (vault=? AND rowid>?)" in plan, plan
    assert "SCAN" not in plan, plan
    assert "COVERING INDEX ix_audit_events_ts (ts>?)" in start, start


# -- logs: host filter and cursor polling ----------------------------------------------------------


def test_logs_host_filter_is_exact_and_normalised(api: httpx.Client, core: Core) -> None:
    for rec in (
        _proxy("default", "injected", 200, host="api.example.com"),
        _proxy("default", "injected", 200, host="sub.api.example.com"),
        _proxy("default", "denied", 403, host="evil.example"),
        _proxy("default", "injected", 200, host="127.0.0.1"),
    ):
        core.audit.submit(rec)
    _flush(core)

    def hosts(**params: str) -> list[str]:
        r = api.get("/v1/vaults/default/logs", params=params)
        assert r.status_code == 200, r.text
        return [x["host"] for x in r.json()["logs"]]

    assert hosts(host="api.example.com") == ["api.example.com"]
    assert hosts(host="API.Example.COM.") == ["api.example.com"]  # case and trailing dot
    assert hosts(host="2130706433") == ["127.0.0.1"]  # an IPv4 literal in integer form
    assert hosts(host="evil.example", decision="denied") == ["evil.example"]
    assert hosts(host="evil.example", decision="injected") == []
    assert hosts(host="nothing.example") == []
    for bad in ("a b", "x/y", "a..b"):
        r = api.get("/v1/vaults/default/logs", params={"host": bad})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert bad not in r.json()["message"]
    r = api.get("/v1/vaults/default/logs", params={"host": "a" * 400})
    assert r.status_code == 422 and "a" * 400 not in r.text


def test_logs_after_cursor_returns_only_newer_records(api: httpx.Client, core: Core) -> None:
    core.audit.submit(_proxy("default", "injected", 200, host="first.example"))
    _flush(core)
    page = api.get("/v1/vaults/default/logs").json()
    latest = page["latest_seq"]
    assert latest >= page["logs"][-1]["seq"]
    idle = api.get("/v1/vaults/default/logs", params={"after": latest}).json()
    assert idle["logs"] == [] and idle["next_cursor"] == latest and idle["latest_seq"] == latest
    core.audit.submit(_proxy("default", "injected", 200, host="second.example"))
    core.audit.submit(_proxy("other", "injected", 200, host="elsewhere.example"))  # another vault
    core.audit.submit(_proxy("default", "denied", 403, host="third.example"))
    _flush(core)
    tail = api.get("/v1/vaults/default/logs", params={"after": latest}).json()
    assert [x["host"] for x in tail["logs"]] == ["second.example", "third.example"]
    assert all(x["seq"] > latest for x in tail["logs"])
    assert tail["latest_seq"] == tail["next_cursor"] == latest + 3
    filtered = api.get("/v1/vaults/default/logs", params={"after": latest, "host": "third.example"}).json()
    assert [x["host"] for x in filtered["logs"]] == ["third.example"]
    nothing_new = api.get("/v1/vaults/default/logs", params={"after": tail["next_cursor"]}).json()
    assert nothing_new["logs"] == []


# -- CA rotation (API and storage; the proxy side is in tests/e2e/test_ca_rotate.py) ---------------


def test_ca_rotate_replaces_the_stored_and_served_ca(api: httpx.Client, core: Core) -> None:
    old_pem = api.get("/v1/mitm/ca.pem").content
    old = core.ca
    r = api.post("/v1/ca/rotate", json={"password": OWNER_PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"fingerprint_sha256", "not_after"}
    new_pem = api.get("/v1/mitm/ca.pem").content
    assert new_pem != old_pem and new_pem == core.ca.cert_pem
    assert body["fingerprint_sha256"] == core.ca.fingerprint_sha256 != old.fingerprint_sha256
    assert body["not_after"] > (datetime.now(UTC) + timedelta(days=3000)).strftime("%Y-%m-%d")
    row = _instance_row(core)
    assert row.ca_cert == new_pem and keys.open_ca(row, core.dek).key_pem == core.ca.key_pem
    assert core.ca.key_pem not in row.ca_key_sealed and not core.home.ca_dir.exists()
    _flush(core)
    rec = list_records(core.store.engine, kind="ca.rotate")
    assert len(rec) == 1 and rec[0]["actor"] == f"user:{OWNER_EMAIL}"
    assert rec[0]["details"]["fingerprint_sha256"] == body["fingerprint_sha256"]
    assert rec[0]["details"]["previous_fingerprint_sha256"] == old.fingerprint_sha256
    assert "PRIVATE KEY" not in str(rec) and "BEGIN CERTIFICATE" not in str(rec)


def test_ca_rotate_needs_the_owner_and_step_up(api: httpx.Client, core: Core) -> None:
    before = core.ca.cert_pem
    r = api.post("/v1/ca/rotate", json={"password": "wrong-password"})
    assert r.status_code == 401 and r.json()["error"] == "step_up_failed"
    assert api.post("/v1/ca/rotate").status_code == 401
    member, agent = _member(api), _agent(api)
    for token in (member, agent):
        r = api.post("/v1/ca/rotate", json={"password": MEMBER_PW}, headers=_bearer(token))
        assert r.status_code == 403, r.text
    r = api.post("/v1/ca/rotate", json={"password": OWNER_PASSWORD, "extra": OWNER_PASSWORD})
    assert r.status_code == 422 and OWNER_PASSWORD not in r.text
    assert core.ca.cert_pem == before and _instance_row(core).ca_cert == before


def _instance_row(core: Core) -> InstanceState:
    with core.store.read() as s:
        row = s.get(InstanceState, 1)
    assert row is not None
    return row


@pytest.mark.parametrize("crash_after", ["key-next", "cert-next", "key-moved"])
def test_an_interrupted_ca_replacement_is_finished_or_dropped_at_load(core: Core, crash_after: str) -> None:
    """Homes from before the CA moved into the database: older versions wrote both *.next files, then
    moved key then cert; a crash at any point leaves a CA whose key and certificate belong together,
    and that CA is what the legacy import reads."""
    ca_dir, old = core.home.ca_dir, core.ca
    ca_dir.mkdir(mode=0o700)
    row = _instance_row(core)
    (ca_dir / "ca-cert.pem").write_bytes(row.ca_cert)
    (ca_dir / "ca-key.enc").write_bytes(row.ca_key_sealed)
    new = keys.new_ca(core.instance_id)
    sealed = crypto.seal(core.dek, new.key_pem, keys.ca_key_aad(core.instance_id))
    (ca_dir / "ca-key.enc.next").write_bytes(sealed)
    if crash_after in ("cert-next", "key-moved"):
        (ca_dir / "ca-cert.pem.next").write_bytes(new.cert_pem)
    if crash_after == "key-moved":
        (ca_dir / "ca-key.enc.next").replace(ca_dir / "ca-key.enc")
    cert, sealed = keys.read_legacy_ca(core.home)
    loaded = keys.open_ca(
        InstanceState(instance_id=core.instance_id, key_mode="password", ca_cert=cert, ca_key_sealed=sealed),
        core.dek,
    )
    expected = old if crash_after == "key-next" else new
    assert (loaded.cert_pem, loaded.key_pem) == (expected.cert_pem, expected.key_pem)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca-cert.pem", "ca-key.enc"]
