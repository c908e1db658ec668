"""A foreign web page rides the human's UI cookie (CSRF, SPEC §9).

The human is logged in to the web UI (`av_ui` cookie). Any page the browser opens - including another
local web server on 127.0.0.1, which is *same-site* and so gets the SameSite=Strict cookie - can make
it send writes to the control API; a bodiless `POST` (agent revoke, logout) even skips the CORS
preflight. Every write route the app has (enumerated from the app itself, so a router added later is
covered without touching this file) is sent with the cookie and a foreign, a same-site, a look-alike,
a `null` or no `Origin`: each is refused 403 `forbidden` with a hint and nothing changes. The same
writes with our own `Origin`, and with a bearer token (with or without an `Origin`), still work; login
from a foreign page is refused (login CSRF) while the CLI's login without `Origin` is not.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import trustme
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD
from helpers.upstream import TLSUpstream
from security.conftest import Sweep, SweptServer, new_secret, start_server

from agent_vault.api.app import create_app

PW = OWNER_PASSWORD
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _walk(routes: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """(method, path) of every write route, also inside included routers (duck-typed: FastAPI
    versions differ in how they keep included routers)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            prefix = str(getattr(getattr(r, "include_context", None), "prefix", "") or "")
            yield from ((m, prefix + p) for m, p in _walk(inner.routes))
            continue
        for m in sorted(set(getattr(r, "methods", None) or ()) & WRITES):
            yield m, str(r.path)


def write_routes() -> set[tuple[str, str]]:
    """Every state-changing route of the app: its OpenAPI document plus the routes hidden from it."""
    app = create_app()
    schema = app.openapi()
    found = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops if m.upper() in WRITES}
    return found | set(_walk(app.routes))


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: TLSUpstream
) -> Iterator[dict[str, Any]]:
    for srv in start_server(tmp_path_factory, upstream_ca, sweep, "origin"):
        with srv.http() as c:
            c.post("/v1/vaults", json={"name": "other"}).raise_for_status()
        srv.set_credential("VICTIM_KEY", new_secret())
        victim = {
            "name": "victim-api",
            "host": "api.upstream.test",
            "port": up.port,
            "auth": {"type": "bearer", "token": "VICTIM_KEY"},
        }
        srv.add_service(victim)
        bot = srv.make_agent("victim-bot")
        session = srv.session(agent="victim-bot")
        with srv.http(bot) as c:
            r = c.post(
                "/v1/proposals",
                json={"services": [{"action": "set", **victim, "name": "proposed-api"}], "message": "hi"},
                headers={"X-Vault": "default"},
            )
            assert r.status_code == 201, r.text
        yield {
            "srv": srv,
            "victim": victim,
            "cookie": srv.login(),  # the browser's UI session (a separate login)
            "pid": str(r.json()["id"]),
            "sid": str(session["id"]),
        }


def _params(w: dict[str, Any], path: str) -> dict[str, str]:
    name = "victim-api" if "/services/" in path else "victim-bot"
    return {
        "v": "default",
        "vault": "default",
        "name": name,
        "key": "VICTIM_KEY",
        "email": OWNER_EMAIL,
        "pid": w["pid"],
        "sid": w["sid"],
        "iid": "1",
        "token": "av_inv_" + "A" * 43,
    }


def _body(w: dict[str, Any], method: str, path: str) -> Any:
    """A body that would succeed if the guard let it through (so a refusal can only be the guard)."""
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/v1/vaults"): {"name": "csrf-vault"},
        ("PATCH", "/v1/vaults/{v}"): {"password": PW, "unmatched_policy": "deny"},
        ("PUT", "/v1/vaults/{v}/credentials/{key}"): {"value": "csrf-planted-value"},
        ("POST", "/v1/vaults/{v}/credentials/{key}/rotate"): {"value": "csrf-planted-value"},
        ("POST", "/v1/vaults/{v}/services"): {
            "password": PW,
            "service": {**w["victim"], "name": "csrf-exfil", "host": "evil.upstream.test"},
        },
        ("PUT", "/v1/vaults/{v}/services/{name}"): {
            "password": PW,
            "service": {**w["victim"], "host": "evil.upstream.test"},
        },
        ("PATCH", "/v1/vaults/{v}/services/{name}"): {"password": PW, "enabled": False},
        ("PUT", "/v1/vaults/{v}/agents/{name}"): {"password": PW, "role": "member"},
        ("PUT", "/v1/vaults/{v}/users/{email}"): {"password": PW, "role": "proxy"},
        ("POST", "/v1/agents"): {
            "password": PW,
            "name": "csrf-minion",
            "vaults": [{"vault": "default", "role": "member"}],
        },
        ("POST", "/v1/sessions"): {"vault": "default", "agent": "victim-bot"},
        ("POST", "/v1/sessions/{sid}/renew"): {"ttl_seconds": 3600},
        ("POST", "/v1/users/invites"): {
            "password": PW,
            "email": "csrf@example.com",
            "role": "owner",
            "vaults": [],
        },
        ("PATCH", "/v1/users/{email}"): {"password": PW, "role": "member"},
        ("POST", "/v1/auth/login"): {"email": OWNER_EMAIL, "password": PW},
        ("POST", "/v1/vaults/{v}/proposals/{pid}/approve"): {"password": PW, "credentials": {}},
        ("POST", "/v1/vaults/{v}/proposals/{pid}/reject"): {"reason": "csrf"},
        ("POST", "/v1/proposals"): {"credentials": [{"action": "set", "key": "CSRF_KEY"}]},
        ("POST", "/v1/invites/{token}/accept"): {"password": "x" * 12},
    }
    return bodies.get((method, path), {"password": PW})


def _state(srv: SweptServer) -> dict[str, Any]:
    """What a forged write could change, as the owner sees it."""
    out: dict[str, Any] = {}
    with srv.http() as c:
        for path in (
            "/v1/vaults",
            "/v1/agents",
            "/v1/users",
            "/v1/vaults/default",
            "/v1/vaults/default/services",
            "/v1/vaults/default/credentials",
            "/v1/vaults/default/agents",
            "/v1/vaults/default/users",
            "/v1/vaults/default/proposals",
            "/v1/sessions",
        ):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
            out[path] = r.json()
    for agent in out["/v1/agents"]["agents"]:
        agent.pop("last_used_at", None)
    return out


def _client(srv: SweptServer) -> httpx.Client:
    """No default token or cookie jar; every answer is swept."""
    return httpx.Client(
        base_url=srv.api,
        trust_env=False,
        timeout=30,
        event_hooks=srv._hook("api (csrf)"),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _bad_origins(srv: SweptServer) -> dict[str, str | None]:
    host = srv.api.removeprefix("http://")
    port = int(host.rsplit(":", 1)[1])
    return {
        "missing": None,
        "foreign": "https://evil.example",
        "same-site other port": f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",
        "localhost other port": f"http://localhost:{port + 1 if port < 65535 else port - 1}",
        "look-alike suffix": f"http://{host}.evil.example",
        "scheme swap": f"https://{host}",
        "null": "null",
        "empty": "",
    }


def test_the_enumeration_is_real() -> None:
    routes = write_routes()
    assert len(routes) >= 30, sorted(routes)
    for must in (
        ("POST", "/v1/agents/{name}/revoke"),
        ("POST", "/v1/agents"),
        ("PUT", "/v1/vaults/{v}/credentials/{key}"),
        ("POST", "/v1/vaults/{v}/services"),
        ("DELETE", "/v1/vaults/{v}/services/{name}"),
        ("PATCH", "/v1/vaults/{v}"),
        ("POST", "/v1/vaults/{v}/proposals/{pid}/approve"),
        ("POST", "/v1/auth/logout"),
        ("POST", "/v1/auth/login"),
    ):
        assert must in routes, must


def test_every_cookie_write_without_our_origin_is_refused_and_changes_nothing(
    world: dict[str, Any],
) -> None:
    srv: SweptServer = world["srv"]
    before = _state(srv)
    problems: list[str] = []
    routes = sorted(write_routes(), key=lambda r: (r[1].endswith("/logout"), r))  # logout last
    with _client(srv) as c:
        for method, template in routes:
            path = template.format(**_params(world, template))
            body = _body(world, method, template)
            for how, origin in _bad_origins(srv).items():
                headers = {"Cookie": f"av_ui={world['cookie']}"}
                if origin is not None:
                    headers["Origin"] = origin
                r = c.request(method, path, json=body, headers=headers)
                label = f"{method} {path} with the cookie, Origin {how} -> {r.status_code}"
                if r.status_code != 403:
                    problems.append(f"{label}: not refused: {r.text[:200]}")
                    continue
                data = r.json()
                if data.get("error") != "forbidden" or not data.get("hint") or not data.get("message"):
                    problems.append(f"{label}: not the SPEC §6 error shape: {data}")
    assert not problems, "\n".join(problems)
    assert _state(srv) == before
    # the forged logout did not end the UI session either
    with _client(srv) as c:
        assert c.get("/v1/auth/me", headers={"Cookie": f"av_ui={world['cookie']}"}).status_code == 200


def test_cookie_writes_with_our_own_origin_work(world: dict[str, Any], sweep: Sweep) -> None:
    srv: SweptServer = world["srv"]
    own = {"Cookie": f"av_ui={world['cookie']}", "Origin": srv.api}
    value = sweep.value("default/COOKIE_KEY")
    with _client(srv) as c:
        r = c.post(
            "/v1/agents",
            json={"password": PW, "name": "cookie-bot", "vaults": [{"vault": "default"}]},
            headers=own,
        )
        assert r.status_code == 201, r.text
        sweep.secret_token("agent token cookie-bot", r.json()["token"])
        assert c.post("/v1/agents/cookie-bot/revoke", headers=own).status_code == 200
        r = c.put("/v1/vaults/default/credentials/COOKIE_KEY", json={"value": value}, headers=own)
        assert r.status_code == 200, r.text
        svc = {**world["victim"], "name": "cookie-api", "path": "/cookie"}
        r = c.post("/v1/vaults/default/services", json={"password": PW, "service": svc}, headers=own)
        assert r.status_code == 201, r.text
        r = c.request("DELETE", "/v1/vaults/default/services/cookie-api", json={"password": PW}, headers=own)
        assert r.status_code == 204, r.text
        r = c.patch("/v1/vaults/default", json={"password": PW, "unmatched_policy": "deny"}, headers=own)
        assert r.status_code == 200, r.text
        r = c.post(
            f"/v1/vaults/default/proposals/{world['pid']}/approve",
            json={"password": PW, "credentials": {}},
            headers={**own, "Origin": srv.api + "/"},  # a trailing slash is the same origin
        )
        assert r.status_code == 200, r.text
        assert c.post("/v1/auth/logout", headers=own).status_code == 204
        assert c.get("/v1/auth/me", headers=own).status_code == 401  # that logout was real
    with srv.http() as c:
        assert c.get("/v1/agents/cookie-bot").json()["status"] == "revoked"
        assert c.get("/v1/vaults/default").json()["settings"]["unmatched_policy"] == "deny"
        proposals = c.get("/v1/vaults/default/proposals").json()["proposals"]
        assert [p["status"] for p in proposals if str(p["id"]) == world["pid"]] == ["applied"]


def test_bearer_writes_are_unaffected_with_or_without_an_origin(world: dict[str, Any], sweep: Sweep) -> None:
    srv: SweptServer = world["srv"]
    value = sweep.value("default/BEARER_KEY")
    for origin in (None, "https://evil.example"):
        headers = {"Authorization": f"Bearer {srv.owner_token}"}
        if origin is not None:
            headers["Origin"] = origin
        with _client(srv) as c:
            name = "bearer-bot" if origin is None else "bearer-bot-two"
            r = c.post(
                "/v1/agents",
                json={"password": PW, "name": name, "vaults": [{"vault": "default"}]},
                headers=headers,
            )
            assert r.status_code == 201, r.text
            sweep.secret_token(f"agent token {name}", r.json()["token"])
            assert c.post(f"/v1/agents/{name}/revoke", headers=headers).status_code == 200
            r = c.put("/v1/vaults/default/credentials/BEARER_KEY", json={"value": value}, headers=headers)
            assert r.status_code == 200, r.text
            # the bearer wins over a cookie sent alongside: the cookie is not used, so no Origin needed
            both = {**headers, "Cookie": f"av_ui={world['cookie']}"}
            r = c.patch(
                "/v1/vaults/default", json={"password": PW, "unmatched_policy": "tunnel"}, headers=both
            )
            assert r.status_code == 200, r.text


def test_login_from_a_foreign_page_is_refused(world: dict[str, Any]) -> None:
    """Login CSRF: a foreign page may not log the browser in (nor guess passwords through it)."""
    srv: SweptServer = world["srv"]
    creds = {"email": OWNER_EMAIL, "password": PW}
    with _client(srv) as c:
        for origin in ("https://evil.example", "null", f"http://{srv.api.removeprefix('http://')}.evil"):
            r = c.post("/v1/auth/login", json=creds, headers={"Origin": origin})
            assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
            assert "set-cookie" not in r.headers
        for headers in ({}, {"Origin": srv.api}):  # the CLI (no Origin) and the UI page itself
            r = c.post("/v1/auth/login", json=creds, headers=headers)
            assert r.status_code == 200, r.text
            assert "av_ui=" in r.headers["set-cookie"]
            srv.sweep.secret_token("csrf login token", r.json()["token"])
