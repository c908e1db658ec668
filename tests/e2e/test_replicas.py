"""Two real `agent-vault server` replicas on one real PostgreSQL behave as one instance (issue 18).

* a change through replica A (service add, credential rotation, agent revoke) is enforced at B within 1 s;
* `kill -9` of A: the changes it acknowledged and the audit records it committed are there, B serves on;
* a PostgreSQL restart is ridden out: the proxy injects from its snapshot, `/ready` says degraded and
  then ready again, the audit records queued meanwhile are written, and the one chain verifies;
* PostgreSQL away for longer than the freshness bound: 503 `store_unavailable`, then it recovers.

`init` runs once (through A's home); B starts on an empty home: everything it needs is in the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from helpers.proxy import RawConn, Resp, basic
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

SECRET_1 = "replica-secret-value-0001"
SECRET_2 = "replica-secret-value-0002"
WITHIN = 1.0  # the consistency promise, seconds


class Pair:
    def __init__(self, tmp: Path, upstream_ca: trustme.CA, url: str, args: tuple[str, ...]) -> None:
        env = {"DATABASE_URL": url}
        for name in ("a", "b"):
            (tmp / name).mkdir()
        self.a = ServerProc(tmp / "a", upstream_ca, key_mode="password", env=env, extra_args=args)
        self.b = ServerProc(tmp / "b", upstream_ca, key_mode="password", env=env, extra_args=args)
        self.a.init()  # once, against the database; B starts on a fresh, empty home
        self.a.start()
        self.b.start()

    def stop(self) -> None:
        for s in (self.a, self.b):
            s.stop()


@pytest.fixture
def pair(tmp_path: Path, upstream_ca: trustme.CA, pg: Any, request: pytest.FixtureRequest) -> Iterator[Pair]:
    args = getattr(request, "param", ())
    p = Pair(tmp_path, upstream_ca, pg.new_database(), args)
    try:
        yield p
    finally:
        p.stop()
        if not pg.running:
            pg.start()


def _get(srv: ServerProc, token: str, port: int, path: str = "/echo/x") -> httpx.Response:
    """One request on a new connection through `srv`'s proxy."""
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=10
    ) as c:
        return c.get(f"https://localhost:{port}{path}")


def _status(srv: ServerProc, token: str, port: int) -> int:
    """The status a client sees: the response's, or the CONNECT refusal's (httpx raises on those)."""
    try:
        return _get(srv, token, port).status_code
    except httpx.ProxyError:
        refused = _refusal(srv, token, port).status
        # 200: refused, then accepted when asked again (the replica caught up in between). No request
        # went through, so it is no answer to report (0): callers waiting for 200 or a refusal ask again.
        return 0 if refused == 200 else refused


def _refusal(srv: ServerProc, token: str, port: int) -> Resp:
    with RawConn(srv.proxy_port) as c:
        return c.connect(f"localhost:{port}", {"Proxy-Authorization": basic(token)})


def _auth_seen(up: TLSUpstream) -> str | None:
    """The Authorization header of the newest request the upstream saw (then forgets them)."""
    req = up.requests_seen.wait_for(1)[-1]
    up.requests_seen.clear()
    return dict((k.lower(), v) for k, v in req["headers"]).get("authorization")


def _injected(srv: ServerProc, token: str, up: TLSUpstream, value: str) -> bool:
    """A request through `srv` reached the upstream with `value` injected (not refused, not tunnelled)."""
    return _status(srv, token, up.port) == 200 and _auth_seen(up) == f"Bearer {value}"


def _service(port: int) -> dict[str, Any]:
    return {
        "name": "echo-api",
        "host": "localhost",
        "port": port,
        "auth": {"type": "bearer", "token": "API_KEY"},
    }


def _ready(srv: ServerProc) -> httpx.Response:
    return httpx.get(srv.api + "/ready", trust_env=False, timeout=10)


def _verify(srv: ServerProc) -> dict[str, Any]:
    with srv.http() as c:
        r = c.post("/v1/audit/verify")
        assert r.status_code == 200, r.text
        return dict(r.json())


def _records(srv: ServerProc, **match: Any) -> list[dict[str, Any]]:
    with srv.http() as c:
        r = c.get("/v1/audit", params={"limit": 1000})
        assert r.status_code == 200, r.text
        recs: list[dict[str, Any]] = r.json()["records"]
    return [x for x in recs if all(x.get(k) == v for k, v in match.items())]


def test_a_change_through_one_replica_is_enforced_at_the_other_within_a_second(
    pair: Pair, upstream: TLSUpstream
) -> None:
    a, b = pair.a, pair.b
    token = a.make_agent("replica-bot")
    # service add through A: B injects it
    a.set_credential("API_KEY", SECRET_1)
    a.add_service(_service(upstream.port))
    wait_until(lambda: _injected(b, token, upstream, SECRET_1), "B injects the new service", timeout=WITHIN)
    # credential rotation through A: B injects the new value
    a.set_credential("API_KEY", SECRET_2)

    wait_until(lambda: _injected(b, token, upstream, SECRET_2), "B injects the rotated value", timeout=WITHIN)
    # agent revoke through A: B refuses the token
    with a.http() as c:
        c.post("/v1/agents/replica-bot/revoke", json={"password": OWNER_PASSWORD}).raise_for_status()
    wait_until(lambda: _status(b, token, upstream.port) == 407, "B refuses the token", timeout=WITHIN)
    # and the other way round: B's change is at A
    token2 = b.make_agent("replica-bot-2")
    wait_until(lambda: _status(a, token2, upstream.port) == 200, "A knows B's agent", timeout=WITHIN)
    result = _verify(b)  # one chain holding both replicas' records
    assert result["ok"], result
    assert {r["actor"] for r in _records(a, kind="agent.create")} >= {"user:owner@example.com"}


def test_a_ca_rotated_through_one_replica_signs_new_connections_at_the_other(
    pair: Pair, upstream: TLSUpstream, tmp_path: Path
) -> None:
    a, b = pair.a, pair.b
    a.set_credential("API_KEY", SECRET_1)
    a.add_service(_service(upstream.port))
    token = a.make_agent("ca-bot")
    with a.http() as c:
        c.post("/v1/ca/rotate", json={"password": OWNER_PASSWORD}).raise_for_status()
    new = httpx.get(a.api + "/v1/mitm/ca.pem", trust_env=False).content
    assert new not in b.ca_bundle.read_bytes()
    wait_until(
        lambda: httpx.get(b.api + "/v1/mitm/ca.pem", trust_env=False).content == new,
        "B serves the new CA",
        timeout=WITHIN,
    )
    bundle = tmp_path / "new-bundle.pem"
    bundle.write_bytes(new + a.upstream_ca_file.read_bytes())
    with httpx.Client(proxy=b.proxy_url(token), verify=str(bundle), trust_env=False, timeout=10) as c:
        assert c.get(f"https://localhost:{upstream.port}/echo/x").status_code == 200  # signed by the new CA
    assert _auth_seen(upstream) == f"Bearer {SECRET_1}"


def test_kill9_of_one_replica_loses_nothing_acknowledged_and_the_other_serves(
    pair: Pair, upstream: TLSUpstream
) -> None:
    a, b = pair.a, pair.b
    a.set_credential("API_KEY", SECRET_1)
    a.add_service(_service(upstream.port))
    token = a.make_agent("crash-bot")
    for _ in range(20):
        assert _get(a, token, upstream.port).status_code == 200
    time.sleep(1.0)  # past the audit writer's commit interval (0.2 s): these records are acknowledged
    a.kill9()
    assert len(_records(b, kind="proxy.request", decision="injected")) == 20  # A's records, read at B
    assert _get(b, token, upstream.port).status_code == 200  # B still injects what A configured
    assert _auth_seen(upstream) == f"Bearer {SECRET_1}"
    b.set_credential("API_KEY", SECRET_2)  # and B still writes
    result = _verify(b)
    assert result["ok"], result
    assert len(_records(b, kind="proxy.request", decision="injected")) == 21
    a.start()  # A comes back on the same database and continues the same chain
    assert _get(a, token, upstream.port).status_code == 200
    assert _auth_seen(upstream) == f"Bearer {SECRET_2}"
    assert _verify(a)["ok"]


def test_postgres_restart_is_ridden_out(pair: Pair, upstream: TLSUpstream, pg: Any) -> None:
    a, b = pair.a, pair.b
    a.set_credential("API_KEY", SECRET_1)
    a.add_service(_service(upstream.port))
    token = a.make_agent("restart-bot")
    wait_until(lambda: _injected(b, token, upstream, SECRET_1), "B injects", timeout=WITHIN)
    assert _verify(b)["ok"]  # flushes B's writer: `before` counts every record so far
    before = len(_records(b, kind="proxy.request", decision="injected"))
    pg.stop()
    try:
        for srv in (a, b):  # the proxy keeps injecting from its snapshot
            assert _get(srv, token, upstream.port).status_code == 200
            assert _auth_seen(upstream) == f"Bearer {SECRET_1}"
        r = wait_until(lambda: (x := _ready(a)).status_code == 503 and x, "A says degraded", timeout=10)
        assert r.json()["status"] == "degraded" and r.json()["reason"]
    finally:
        pg.start()
    for srv in (a, b):
        wait_until(lambda s=srv: _ready(s).status_code == 200, "ready again", timeout=20)  # type: ignore[misc]
    wait_until(
        lambda: len(_records(b, kind="proxy.request", decision="injected")) == before + 2,
        "the records queued during the restart are written",
        timeout=20,
    )
    assert _verify(a)["ok"] and _verify(b)["ok"]
    a.set_credential("API_KEY", SECRET_2)  # and changes flow again
    wait_until(
        lambda: (
            _get(b, token, upstream.port).status_code == 200 and _auth_seen(upstream) == f"Bearer {SECRET_2}"
        ),
        "B sees A's change after the restart",
        timeout=WITHIN + 2,
    )


@pytest.mark.parametrize("pair", [("--freshness-bound", "2")], indirect=True)
def test_postgres_away_past_the_bound_refuses_then_recovers(
    pair: Pair, upstream: TLSUpstream, pg: Any
) -> None:
    a = pair.a
    a.set_credential("API_KEY", SECRET_1)
    a.add_service(_service(upstream.port))
    token = a.make_agent("bound-bot")
    assert _get(a, token, upstream.port).status_code == 200
    pg.stop()
    try:
        r = wait_until(
            lambda: (x := _refusal(a, token, upstream.port)).status == 503 and x,
            "503 past the bound",
            timeout=15,
        )
        assert r.json()["error"] == "store_unavailable" and r.json()["hint"]
        ready = _ready(a)
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        assert "refusing" in ready.json()["reason"]
    finally:
        pg.start()
    wait_until(lambda: _status(a, token, upstream.port) == 200, "serving again", timeout=20)
    assert _ready(a).status_code == 200
