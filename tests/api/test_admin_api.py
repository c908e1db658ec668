"""Admin API over the in-process app: roles, step-up, bad input changes nothing, values never echoed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
from helpers.core import OWNER_PASSWORD

from agent_vault.core import Core

SECRET = "sk-test-abcdefghijklmnop"


def _agent(api: httpx.Client, name: str = "ci-bot", role: str = "proxy") -> str:
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": name, "vaults": [{"vault": "default", "role": role}]},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_vault_names_are_validated_and_duplicates_refused(api: httpx.Client) -> None:
    assert api.post("/v1/vaults", json={"name": "team-a"}).status_code == 201
    for bad in ("Team", "a", "-x-", "a--b", "admin", "x" * 65):
        r = api.post("/v1/vaults", json={"name": bad})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad
    r = api.post("/v1/vaults", json={"name": "team-a"})
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    names = [v["name"] for v in api.get("/v1/vaults").json()["vaults"]]
    assert names == ["default", "team-a"]


def test_credentials_are_write_only(api: httpx.Client, core: Core) -> None:
    r = api.put("/v1/vaults/default/credentials/API_KEY", json={"value": SECRET, "description": "demo"})
    assert r.status_code == 200 and r.json() == {"key": "API_KEY", "version": 1}
    listing = api.get("/v1/vaults/default/credentials")
    assert SECRET not in listing.text
    assert listing.json()["credentials"][0]["has_value"] is True
    assert core.runtime.snapshot.vaults["default"].values["API_KEY"] == SECRET
    assert SECRET not in repr(core.runtime.snapshot.vaults["default"])


def test_bad_credential_input_is_refused_and_changes_nothing(api: httpx.Client) -> None:
    assert api.put("/v1/vaults/default/credentials/API_KEY", json={"value": ""}).status_code == 422
    assert api.put("/v1/vaults/default/credentials/bad-key", json={"value": SECRET}).status_code == 422
    assert api.put("/v1/vaults/nope/credentials/API_KEY", json={"value": SECRET}).status_code == 404
    r = api.put("/v1/vaults/default/credentials/API_KEY", json={"value": SECRET, "extra": 1})
    assert r.status_code == 422 and SECRET not in r.text  # 422 never echoes input
    assert api.get("/v1/vaults/default/credentials").json()["credentials"] == []


def test_step_up_is_required_for_service_writes(api: httpx.Client) -> None:
    svc = {"name": "github", "host": "api.github.com", "auth": {"type": "bearer", "token": "GITHUB_TOKEN"}}
    r = api.post("/v1/vaults/default/services", json={"password": "wrong-password", "service": svc})
    assert r.status_code == 401 and r.json()["error"] == "step_up_failed"
    assert api.get("/v1/vaults/default/services").json()["services"] == []
    r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
    assert r.status_code == 201
    r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
    assert r.status_code == 409
    bad = {**svc, "name": "bad-host", "host": "*"}
    r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": bad})
    assert r.status_code == 422 and r.json()["fields"]


def test_agent_token_shown_once_rotate_and_revoke_take_effect(api: httpx.Client, core: Core) -> None:
    token = _agent(api)
    assert token.startswith("av_agt_")
    assert token not in api.get("/v1/agents").text
    agent_hdr = {"Authorization": f"Bearer {token}"}
    assert api.get("/v1/discover", headers=agent_hdr).status_code == 200
    r = api.post("/v1/agents/ci-bot/rotate", json={"password": OWNER_PASSWORD})
    new = r.json()["token"]
    assert new != token
    assert api.get("/v1/discover", headers=agent_hdr).status_code == 401  # old token dead at once
    new_hdr = {"Authorization": f"Bearer {new}"}
    assert api.get("/v1/discover", headers=new_hdr).status_code == 200
    assert api.post("/v1/agents/ci-bot/revoke").json()["status"] == "revoked"
    assert api.get("/v1/discover", headers=new_hdr).status_code == 401
    from agent_vault import crypto
    from agent_vault.models import Token

    with core.store.read() as s:
        digests = {t.digest for t in s.exec(__import__("sqlmodel").select(Token))}
    assert crypto.digest(new) in digests and new not in digests


def test_agents_cannot_write_services_grants_or_reveal(api: httpx.Client) -> None:
    token = _agent(api, role="member")
    hdr = {"Authorization": f"Bearer {token}"}
    svc = {"name": "evil", "host": "evil.example.com", "auth": {"type": "bearer", "token": "API_KEY"}}
    assert (
        api.post(
            "/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc}, headers=hdr
        ).status_code
        == 403
    )
    api.put("/v1/vaults/default/credentials/API_KEY", json={"value": SECRET})
    r = api.post(
        "/v1/vaults/default/credentials/API_KEY/reveal", json={"password": OWNER_PASSWORD}, headers=hdr
    )
    assert r.status_code == 403 and SECRET not in r.text
    assert (
        api.put(
            "/v1/vaults/default/agents/ci-bot",
            json={"password": OWNER_PASSWORD, "role": "member"},
            headers=hdr,
        ).status_code
        == 403
    )
    assert (
        api.post(
            "/v1/agents", json={"password": OWNER_PASSWORD, "name": "other-bot"}, headers=hdr
        ).status_code
        == 403
    )


def test_agents_cannot_be_admins_and_names_are_checked(api: httpx.Client) -> None:
    r = api.post(
        "/v1/agents",
        json={
            "password": OWNER_PASSWORD,
            "name": "root-bot",
            "vaults": [{"vault": "default", "role": "admin"}],
        },
    )
    assert r.status_code == 422
    assert api.post("/v1/agents", json={"password": OWNER_PASSWORD, "name": "Bad Name"}).status_code == 422
    _agent(api, "dup-bot")
    assert api.post("/v1/agents", json={"password": OWNER_PASSWORD, "name": "dup-bot"}).status_code == 409
    assert (
        api.post(
            "/v1/agents", json={"password": OWNER_PASSWORD, "name": "x-bot", "vaults": [{"vault": "nope"}]}
        ).status_code
        == 404
    )


def test_sessions_are_proxy_scoped_and_revocable(api: httpx.Client) -> None:
    token = _agent(api)
    hdr = {"Authorization": f"Bearer {token}"}
    r = api.post("/v1/sessions", json={"ttl_seconds": 600}, headers=hdr)
    assert r.status_code == 201
    sess = r.json()
    assert sess["token"].startswith("av_sess_")
    s_hdr = {"Authorization": f"Bearer {sess['token']}"}
    assert api.get("/v1/discover", headers=s_hdr).json()["role"] == "proxy"
    assert api.post("/v1/sessions", json={}, headers=s_hdr).status_code == 403  # no minting from sessions
    assert api.post("/v1/sessions", json={"ttl_seconds": 10}, headers=hdr).status_code == 422
    r = api.post("/v1/sessions", json={"unmatched_policy": "deny"}, headers=hdr)
    assert r.status_code == 201
    assert api.delete(f"/v1/sessions/{sess['id']}", headers=hdr).status_code == 204
    assert api.get("/v1/discover", headers=s_hdr).status_code == 401


def test_users_and_last_owner(api: httpx.Client) -> None:
    r = api.post(
        "/v1/users/invites",
        json={
            "password": OWNER_PASSWORD,
            "email": "m@example.com",
            "vaults": [{"vault": "default", "role": "member"}],
        },
    )
    assert r.status_code == 201
    invite = r.json()["token"]
    r = api.post(f"/v1/invites/{invite}/accept", json={"password": "member-pass-1"})
    assert r.status_code == 201
    assert api.post(f"/v1/invites/{invite}/accept", json={"password": "member-pass-1"}).status_code == 404
    emails = [u["email"] for u in api.get("/v1/users").json()["users"]]
    assert emails == ["owner@example.com", "m@example.com"]
    r = api.request("DELETE", "/v1/users/owner@example.com", json={"password": OWNER_PASSWORD})
    assert r.status_code == 409


def test_login_failures_are_rate_limited_and_generic(api: httpx.Client) -> None:
    for _ in range(10):
        r = api.post("/v1/auth/login", json={"email": "owner@example.com", "password": "nope-nope"})
        assert r.status_code == 401 and r.json()["message"] == "wrong email or password"
    r = api.post("/v1/auth/login", json={"email": "owner@example.com", "password": OWNER_PASSWORD})
    assert r.status_code == 429 and "Retry-After" in r.headers
    r = api.post("/v1/auth/login", json={"email": "ghost@example.com", "password": "whatever1"})
    assert r.status_code == 401


def test_unknown_token_and_missing_token(api: httpx.Client) -> None:
    assert api.get("/v1/vaults", headers={"Authorization": "Bearer av_usr_nope"}).status_code == 401
    from starlette.testclient import TestClient

    with TestClient(api.app, base_url="http://127.0.0.1:14321") as anonymous:  # type: ignore[attr-defined]
        r = anonymous.get("/v1/vaults")
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"


def test_grants_set_list_and_remove(api: httpx.Client) -> None:
    _agent(api, "grant-bot")
    api.post("/v1/vaults", json={"name": "team-b"})
    r = api.put("/v1/vaults/team-b/agents/grant-bot", json={"password": OWNER_PASSWORD, "role": "member"})
    assert r.status_code == 200 and r.json() == {"name": "grant-bot", "role": "member"}
    r = api.put("/v1/vaults/team-b/agents/grant-bot", json={"password": OWNER_PASSWORD, "role": "proxy"})
    assert api.get("/v1/vaults/team-b/agents").json()["agents"] == [{"name": "grant-bot", "role": "proxy"}]
    r = api.request("DELETE", "/v1/vaults/team-b/agents/grant-bot", json={"password": OWNER_PASSWORD})
    assert r.status_code == 204
    r = api.request("DELETE", "/v1/vaults/team-b/agents/grant-bot", json={"password": OWNER_PASSWORD})
    assert r.status_code == 404
    assert (
        api.put(
            "/v1/vaults/team-b/agents/nobody", json={"password": OWNER_PASSWORD, "role": "proxy"}
        ).status_code
        == 404
    )


def test_a_vault_admin_cannot_grant_an_agent_of_other_vaults(api: httpx.Client) -> None:
    """SPEC §3.3: changing an agent's grants needs the owner, or admin of every vault the agent is (or
    would be) granted on: an admin of one vault cannot pull another team's agent into it."""
    _agent(api, "foreign-bot")  # granted on default
    api.post("/v1/vaults", json={"name": "team-c"}).raise_for_status()
    r = api.post(
        "/v1/users/invites",
        json={
            "password": OWNER_PASSWORD,
            "email": "c-admin@example.com",
            "vaults": [{"vault": "team-c", "role": "admin"}],
        },
    )
    invite = r.json()["token"]
    r = api.post(f"/v1/invites/{invite}/accept", json={"password": "c-admin-pass-1"})
    assert r.status_code == 201
    alice = {"Authorization": f"Bearer {r.json()['token']}"}
    body = {"password": "c-admin-pass-1", "role": "proxy"}
    r = api.put("/v1/vaults/team-c/agents/foreign-bot", json=body, headers=alice)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert api.get("/v1/vaults/team-c/agents").json()["agents"] == []  # nothing half-written
    r = api.post(
        "/v1/agents",
        json={"password": OWNER_PASSWORD, "name": "c-bot", "vaults": [{"vault": "team-c", "role": "proxy"}]},
    )
    assert r.status_code == 201
    r = api.put("/v1/vaults/team-c/agents/c-bot", json={**body, "role": "member"}, headers=alice)
    assert r.status_code == 200 and r.json() == {"name": "c-bot", "role": "member"}  # her own team's agent


def test_a_chunked_body_over_1_mib_is_refused_as_it_arrives(api: httpx.Client) -> None:
    """No Content-Length to check up front: the body is counted as it arrives (it was read whole)."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered
            sent += 65536
            yield b"x" * 65536

    r = api.post("/v1/auth/login", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body_too_large" and r.json()["limit_bytes"] == 1 << 20


def test_session_list_names_who_each_session_acts_for(api: httpx.Client) -> None:
    hdr = {"Authorization": f"Bearer {_agent(api, 'lister-bot')}"}
    mine = api.post("/v1/sessions", json={"label": "by the agent"}, headers=hdr).json()["id"]
    owners = api.post("/v1/sessions", json={"vault": "default", "label": "by the owner"}).json()["id"]
    listed = {s["id"]: s for s in api.get("/v1/sessions", params={"vault": "default"}).json()["sessions"]}
    assert listed[mine]["actor"] == "agent:lister-bot" and listed[mine]["label"] == "by the agent"
    assert listed[owners]["actor"] == "user:owner@example.com"


def test_discover_reports_the_policy_the_proxy_applies_to_a_session(api: httpx.Client) -> None:
    """A session's stricter override shows in discover; once the vault itself is stricter, the vault's."""
    hdr = {"Authorization": f"Bearer {_agent(api, 'policy-bot')}"}
    r = api.post("/v1/sessions", json={"unmatched_policy": "passthrough"}, headers=hdr)
    s_hdr = {"Authorization": f"Bearer {r.json()['token']}"}
    assert api.get("/v1/discover", headers=s_hdr).json()["unmatched_policy"] == "passthrough"
    assert api.get("/v1/discover", headers=hdr).json()["unmatched_policy"] == "tunnel"
    assert (
        api.patch(
            "/v1/vaults/default", json={"unmatched_policy": "deny", "password": OWNER_PASSWORD}
        ).status_code
        == 200
    )
    try:
        assert api.get("/v1/discover", headers=s_hdr).json()["unmatched_policy"] == "deny"
    finally:
        api.patch(
            "/v1/vaults/default", json={"unmatched_policy": "tunnel", "password": OWNER_PASSWORD}
        ).raise_for_status()


def test_discover_tells_agents_which_schemes_a_service_accepts(api: httpx.Client) -> None:
    """An agent learns from discover that a service refuses plain http (`insecure_scheme`) unless opted in."""
    for name, extra in (("tls-only", {}), ("plain-ok", {"allow_http": True})):
        svc = {"name": name, "host": f"{name}.example.com", "auth": {"type": "bearer", "token": "K"}, **extra}
        r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
        assert r.status_code in (200, 201), r.text
    hdr = {"Authorization": f"Bearer {_agent(api)}"}
    schemes = {s["name"]: s["schemes"] for s in api.get("/v1/discover", headers=hdr).json()["services"]}
    assert schemes == {"tls-only": ["https"], "plain-ok": ["https", "http"]}


def test_refusals_say_what_to_do_next(api: httpx.Client) -> None:
    """SPEC §6: the hint is what to do next, specific to the refusal (not a generic 'retry')."""
    r = api.request("DELETE", "/v1/vaults/default", json={"password": OWNER_PASSWORD})
    assert r.status_code == 409 and "Every instance keeps it" in r.json()["hint"], r.text
    _agent(api, "twin-bot")
    r = api.post("/v1/agents", json={"password": OWNER_PASSWORD, "name": "twin-bot"})
    assert r.status_code == 409 and "agent-vault agent info twin-bot" in r.json()["hint"], r.text
    r = api.post("/v1/vaults", json={"name": "admin"})
    assert r.status_code == 422 and "reserved" in r.json()["hint"], r.text
    api.put("/v1/vaults/default/credentials/USED_KEY", json={"value": SECRET})
    svc = {"name": "uses-it", "host": "api.example.com", "auth": {"type": "bearer", "token": "USED_KEY"}}
    r = api.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
    assert r.is_success, r.text
    r = api.delete("/v1/vaults/default/credentials/USED_KEY")
    assert r.status_code == 409 and "--force" in r.json()["hint"], r.text


def test_auth_me_gives_an_agent_its_highest_vault_role(api: httpx.Client) -> None:
    """A member agent is not reported as `proxy` (the CLI's `auth status` prints this role)."""
    for name, role in (("member-bot", "member"), ("proxy-bot", "proxy")):
        token = _agent(api, name, role)
        me = api.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
        assert (me["kind"], me["role"], me["vaults"]) == ("agent", role, [{"name": "default", "role": role}])
