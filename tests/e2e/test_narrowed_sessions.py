"""Narrowed sessions (issue 19): `session create --service --method` and `vault run --only-service
--only-method` mint a session limited to some services (and methods) of its vault; anything else gets
403 `service_not_allowed` with a hint saying the session is narrowed; a narrowed session mints only
narrower ones. Real server, real upstream, real CLI and clients.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import pytest
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

SECRET_A, SECRET_B = "sk-narrow-a-value-1f2e3d", "sk-narrow-b-value-4c5b6a"


@pytest.fixture
def two_services(server: ServerProc, upstream: TLSUpstream) -> ServerProc:
    server.set_credential("A_TOKEN", SECRET_A)
    server.set_credential("B_TOKEN", SECRET_B)
    for name, key in (("svc-a", "A_TOKEN"), ("svc-b", "B_TOKEN")):
        server.add_service(
            {"name": name, "host": "localhost", "port": upstream.port, "path": f"/echo/{name}",
             "auth": {"type": "bearer", "token": key}}
        )  # fmt: skip
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    return server


def _px(server: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(
        proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False, timeout=15
    )


def test_session_create_narrows_services_and_methods(two_services: ServerProc, upstream: TLSUpstream) -> None:
    server = two_services
    cp = server.cli("session", "create", "--service", "svc-a", "--method", "get", "--ttl", "1h", "--json")
    made = json.loads(cp.stdout)
    assert made["only_services"] == ["svc-a"] and made["only_methods"] == ["GET"]
    token = made["token"]
    base = f"https://localhost:{upstream.port}/echo"
    with _px(server, token) as c:
        ok = c.get(f"{base}/svc-a/x")
        assert ok.status_code == 200 and ok.json()["headers"]["authorization"] == "Bearer [REDACTED:A_TOKEN]"
        refused: list[Any] = [
            c.post(f"{base}/svc-a/x", content=b"{}"),  # method outside the narrowing
            c.get(f"{base}/svc-b/x"),  # another service of the vault
            c.get(f"https://127.0.0.1:{upstream.port}/echo/elsewhere"),  # an unlisted host: no tunnel
        ]
    for r in refused:
        assert r.status_code == 403, r.text
        body = r.json()
        assert body["error"] == "service_not_allowed" and "narrowed" in body["hint"]
        assert body["narrowed"] == {"services": ["svc-a"], "methods": ["GET"]}
    [sent] = upstream.requests_seen.snapshot()  # only the allowed request went out
    assert ("authorization", f"Bearer {SECRET_A}") in [(k.lower(), v) for k, v in sent["headers"]]
    with server.http(token) as api:
        found = api.get("/v1/discover").json()
        assert [s["name"] for s in found["services"]] == ["svc-a"]
        assert found["narrowed"] == {"services": ["svc-a"], "methods": ["GET"]}
        wider = api.post("/v1/sessions", json={"only_services": ["svc-a", "svc-b"]})
        assert wider.status_code == 403
        assert api.post("/v1/sessions", json={}).status_code == 403  # not narrower: refused
        assert api.post("/v1/sessions", json={"only_methods": ["POST"]}).status_code == 403
        child = api.post("/v1/sessions", json={"only_services": ["svc-a"], "ttl_seconds": 600})
        assert child.status_code == 201, child.text
        assert child.json()["only_methods"] == ["GET"]  # inherits the parent's narrowing
    with _px(server, child.json()["token"]) as c:
        assert c.get(f"{base}/svc-a/child").status_code == 200
        assert c.post(f"{base}/svc-a/child").status_code == 403
    bad = server.cli("session", "create", "--service", "no-such", check=False)
    assert bad.returncode == 1 and "no service no-such" in bad.stderr


CHILD = """
import httpx, json, os
out = {}
with httpx.Client(trust_env=True, timeout=15) as c:
    for name in ("svc-a", "svc-b"):
        out[name] = c.get(f"https://localhost:{os.environ['UP_PORT']}/echo/{name}/run").status_code
out["token"] = os.environ["AGENT_VAULT_TOKEN"][:12]
print(json.dumps(out))
"""


def test_vault_run_only_service_and_nested(two_services: ServerProc, upstream: TLSUpstream) -> None:
    server = two_services
    env = {**server.env, "UP_PORT": str(upstream.port)}
    cp = server.cli("vault", "run", "--only-service", "svc-a", "--", sys.executable, "-c", CHILD, env=env)
    assert json.loads(cp.stdout.strip().splitlines()[-1]) | {"token": ""} == {
        "svc-a": 200,
        "svc-b": 403,
        "token": "",
    }
    # nested: a session (from an outer vault run) narrows further with a child session, revoked at exit
    with server.http() as api:
        outer = api.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 3600}).json()
    nested_env = {**env, "AGENT_VAULT_TOKEN": outer["token"]}
    cp = server.cli(
        "vault", "run", "--only-service", "svc-b", "--", sys.executable, "-c", CHILD, env=nested_env
    )
    assert "warning" not in cp.stderr, cp.stderr
    got = json.loads(cp.stdout.strip().splitlines()[-1])
    assert (got["svc-a"], got["svc-b"]) == (403, 200)
    with server.http() as api:
        live = {s["id"] for s in api.get("/v1/sessions", params={"vault": "default"}).json()["sessions"]}
    assert live == {outer["id"]}  # the child was revoked when the command exited


def test_revoking_a_session_revokes_the_sessions_it_minted(
    two_services: ServerProc, upstream: TLSUpstream
) -> None:
    """QA repro: an agent mints P, P mints a narrower C, a human revokes P: C is refused on its very next
    request (also on its open proxy connection). `session list` names C's parent; a second revoke of P
    is one `already revoked` line, exit 1, with no second audit record."""
    server = two_services
    agent_env = {**server.env, "AGENT_VAULT_TOKEN": server.make_agent("tree-bot")}
    cp = server.cli("session", "create", "--ttl", "10m", "--label", "parent", "--json", env=agent_env)
    parent = json.loads(cp.stdout)
    cp = server.cli(
        "session", "create", "--service", "svc-a", "--label", "child", "--json",
        env={**server.env, "AGENT_VAULT_TOKEN": parent["token"]},
    )  # fmt: skip
    child = json.loads(cp.stdout)
    listed = json.loads(server.cli("vault", "session", "list", "--json").stdout)["sessions"]
    assert {s["id"]: s["parent_id"] for s in listed} == {parent["id"]: None, child["id"]: parent["id"]}
    table = server.cli("vault", "session", "list").stdout
    assert "parent_id" in table and str(parent["id"]) in table
    base = f"https://localhost:{upstream.port}/echo"
    with _px(server, child["token"]) as c:
        assert c.get(f"{base}/svc-a/before").status_code == 200  # the connection stays open
        revoked = server.cli("vault", "session", "revoke", str(parent["id"]))
        assert revoked.stdout.strip() == f"revoked session {parent['id']}"
        after = c.get(f"{base}/svc-a/after")
        assert after.status_code == 407, after.text
    for token in (parent["token"], child["token"]):
        with server.http(token) as api:
            assert api.get("/v1/discover").status_code == 401
    assert [r["path"] for r in upstream.requests_seen.snapshot()] == ["/echo/svc-a/before"]
    again = server.cli("vault", "session", "revoke", str(parent["id"]), check=False)
    assert again.returncode == 1 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and "already revoked" in again.stderr
    assert "Traceback" not in again.stderr and parent["token"] not in again.stderr + again.stdout
    with server.http() as api:
        marker = api.post("/v1/sessions", json={"vault": "default", "label": "marker"}).json()["id"]

        def revokes() -> list[dict[str, Any]] | None:
            got = api.get("/v1/vaults/default/logs", params={"kind": "session.*", "limit": 100}).json()
            recs = got["logs"]
            done = any(r["kind"] == "session.create" and r["target"] == str(marker) for r in recs)
            return [r for r in recs if r["kind"] == "session.revoke"] if done else None

        records = wait_until(revokes, "the marker session's audit record")
    assert [(r["target"], r["details"]) for r in records] == [(str(parent["id"]), {"cascade": [child["id"]]})]
