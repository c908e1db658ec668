"""Approval holds end to end (issue 19): the real server, a real HTTPS upstream, real clients, the CLI.

A request to a service flagged `--approval-required` waits in the proxy while a human decides; the
upstream sees nothing before approval. Approved once / for an hour / always, denied, timed out, 20 at
once, cancelled by a client that goes away, and answered 503 when the server stops.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from helpers.proxy import audit_records
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

SECRET = "sk-held-until-approved-5b7e1d"


@pytest.fixture
def world(server: ServerProc, upstream: TLSUpstream) -> Iterator[dict[str, Any]]:
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    server.set_credential("PAY_TOKEN", SECRET)
    added = server.cli(
        "vault",
        "service",
        "add",
        "payments",
        "--host",
        "localhost",
        "--port",
        str(upstream.port),
        "--auth-type",
        "bearer",
        "--token-key",
        "PAY_TOKEN",
        "--approval-required",
        "--approval-methods",
        "POST,DELETE",
        "--approval-timeout",
        "30s",
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )
    assert "wait for approval" in added.stdout
    token = server.make_agent("pay-bot")
    pool = ThreadPoolExecutor(max_workers=24)
    yield {"token": token, "pool": pool, "url": f"https://localhost:{upstream.port}/echo/pay"}
    pool.shutdown(wait=True)


def _client(server: ServerProc, token: str, timeout: float = 60) -> httpx.Client:
    return httpx.Client(
        proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False, timeout=timeout
    )


def _post(server: ServerProc, token: str, url: str, body: str = '{"amount": 5}') -> httpx.Response:
    with _client(server, token) as c:
        return c.post(url, content=body, headers={"Content-Type": "application/json"})


def _holds(server: ServerProc, n: int = 1) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]]:
        with server.http() as c:
            holds = c.get("/v1/vaults/default/holds").json()["holds"]
        return holds if len(holds) >= n else []

    return wait_until(listed, f"{n} pending hold(s)")


def _approve(server: ServerProc, hold_id: str, scope: str) -> Any:
    return server.cli(
        "vault", "hold", "approve", hold_id, "--scope", scope, "--password-stdin", input=OWNER_PASSWORD + "\n"
    )


def test_held_until_a_human_approves_once_from_the_cli(
    server: ServerProc, upstream: TLSUpstream, world: dict[str, Any]
) -> None:
    fut: Future[httpx.Response] = world["pool"].submit(_post, server, world["token"], world["url"] + "?q=1")
    [hold] = _holds(server)
    assert upstream.requests_seen.snapshot() == []  # nothing reaches the upstream before approval
    assert not fut.done()
    assert hold["method"] == "POST" and hold["host"] == "localhost" and hold["path"] == "/echo/pay"
    assert hold["agent"] == "agent:pay-bot" and hold["service"] == "payments" and hold["status"] == "pending"
    listed = server.cli("vault", "hold", "list", "--json")
    assert json.loads(listed.stdout)["holds"][0]["id"] == hold["id"]
    assert "amount" not in listed.stdout and SECRET not in listed.stdout  # never bodies or values
    with server.http() as c:
        vaults = c.get("/v1/vaults").json()["vaults"]
        assert [v["pending_holds"] for v in vaults if v["name"] == "default"] == [1]
    with server.http(world["token"]) as c:  # the agent sees its own holds
        assert [h["id"] for h in c.get("/v1/holds").json()["holds"]] == [hold["id"]]
        refused = c.post(f"/v1/vaults/default/holds/{hold['id']}/approve", json={"password": OWNER_PASSWORD})
        assert refused.status_code == 403  # an agent never approves, even with the right password
    approved = _approve(server, hold["id"], "once")
    assert f"approved hold {hold['id']}" in approved.stdout
    r = fut.result(timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["body"] == '{"amount": 5}'
    sent = upstream.requests_seen.wait_for(1)[0]
    assert dict((k.lower(), v) for k, v in sent["headers"])["authorization"] == f"Bearer {SECRET}"
    with _client(server, world["token"]) as c:  # GET is not in --approval-methods: not held
        assert c.get(world["url"]).status_code == 200
    fut2: Future[httpx.Response] = world["pool"].submit(_post, server, world["token"], world["url"])
    [again] = _holds(server)  # "once" approves one request only
    assert again["id"] != hold["id"]
    server.cli("vault", "hold", "deny", again["id"])
    r2 = fut2.result(timeout=30)
    assert r2.status_code == 403 and r2.json()["error"] == "approval_denied"
    assert r2.headers["x-agent-vault-proxy-error"] == "true"
    assert len(upstream.requests_seen.snapshot()) == 2  # the POST and the GET; never the denied one
    wait_until(lambda: audit_records(server.home, kind="hold.deny"), "the deny audit record")
    kinds = [rec["kind"] for rec in audit_records(server.home)]
    assert {"hold.create", "hold.approve", "hold.deny"} <= set(kinds)
    decided = audit_records(server.home, kind="hold.approve")[0]
    assert decided["actor"] == f"user:{OWNER_EMAIL}" and decided["details"]["scope"] == "once"


def test_an_hour_then_always(server: ServerProc, upstream: TLSUpstream, world: dict[str, Any]) -> None:
    fut = world["pool"].submit(_post, server, world["token"], world["url"])
    [hold] = _holds(server)
    _approve(server, hold["id"], "1h")
    assert fut.result(timeout=30).status_code == 200
    for _ in range(3):  # within the hour: straight through
        assert _post(server, world["token"], world["url"]).status_code == 200
    other = server.make_agent("other-bot")  # the hour is for that agent only
    fut = world["pool"].submit(_post, server, other, world["url"])
    [held] = _holds(server)
    assert held["agent"] == "agent:other-bot"
    _approve(server, held["id"], "always")
    assert fut.result(timeout=30).status_code == 200
    assert _post(server, other, world["url"]).status_code == 200
    with server.http() as c:
        svc = c.get("/v1/vaults/default/services/payments").json()
    assert svc["approval"]["exempt"] == ["agent:other-bot"]
    change = wait_until(lambda: audit_records(server.home, kind="service.update"), "the service change")
    assert change[-1]["details"] == {"approval_exempt": "agent:other-bot"}


def test_timeout_and_a_client_that_goes_away(
    server: ServerProc, upstream: TLSUpstream, world: dict[str, Any]
) -> None:
    server.cli(
        "vault", "service", "set", "payments", "--approval-timeout", "2s", "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )  # fmt: skip
    r = _post(server, world["token"], world["url"])
    assert r.status_code == 403 and r.json()["error"] == "approval_timeout", r.text
    assert upstream.requests_seen.snapshot() == []
    server.cli(
        "vault", "service", "set", "payments", "--approval-timeout", "60s", "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )  # fmt: skip
    gone = threading.Event()

    def impatient() -> None:
        with _client(server, world["token"], timeout=1.5) as c, pytest.raises(httpx.ReadTimeout):
            c.post(world["url"], content=b"{}")
        gone.set()

    world["pool"].submit(impatient)
    _holds(server)
    assert gone.wait(10)

    def cleared() -> bool:
        with server.http() as c:
            return c.get("/v1/vaults/default/holds").json()["holds"] == []

    wait_until(cleared, "the abandoned hold to be cancelled")
    assert upstream.requests_seen.snapshot() == []
    wait_until(lambda: audit_records(server.home, kind="hold.timeout"), "the timeout audit record")
    wait_until(lambda: audit_records(server.home, kind="hold.cancel"), "the cancel audit record")


def test_twenty_held_at_once_then_approved(
    server: ServerProc, upstream: TLSUpstream, world: dict[str, Any]
) -> None:
    futs = [
        world["pool"].submit(_post, server, world["token"], f"{world['url']}/{i}", f'{{"n": {i}}}')
        for i in range(20)
    ]
    holds = _holds(server, 20)
    assert len({h["id"] for h in holds}) == 20 and upstream.requests_seen.snapshot() == []
    with server.http() as c:  # meanwhile the proxy and the API still answer
        assert c.get("/v1/discover", headers={"X-Vault": "default"}).status_code == 200
    with _client(server, world["token"]) as c:
        assert c.get(world["url"]).status_code == 200
    with server.http() as c:
        for h in holds:
            body = {"password": OWNER_PASSWORD, "scope": "once"}
            r = c.post(f"/v1/vaults/default/holds/{h['id']}/approve", json=body)
            assert r.status_code == 200, r.text
    results = [f.result(timeout=60) for f in futs]
    assert [r.status_code for r in results] == [200] * 20
    assert sorted(r.json()["path"] for r in results) == sorted(f"/echo/pay/{i}" for i in range(20))


def test_a_server_stop_answers_pending_holds_with_503(server: ServerProc, world: dict[str, Any]) -> None:
    fut = world["pool"].submit(_post, server, world["token"], world["url"])
    _holds(server)
    assert server.stop() == 0
    r = fut.result(timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "hold_interrupted"
    assert "retry" in r.json()["hint"]
