"""`vault run` names, once on stderr after the child exits, each host the child reached that matched no
service of the vault (nothing injected there); --quiet silences it."""

from __future__ import annotations

import time

from helpers.cli_fixtures import SECRET, assert_clean, mserver, mupstream
from helpers.proxy import RawConn, basic
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

__all__ = ["mserver", "mupstream"]
CURL = "/usr/bin/curl"
HINT = (
    "which no service of vault default matches (nothing injected); "
    "add one with 'agent-vault vault service add'"
)


def test_run_names_hosts_that_matched_no_service(mserver: ServerProc, mupstream: TLSUpstream) -> None:
    # a service on localhost (so loopback goes through the proxy); 127.0.0.1 matches none: tunnelled
    mserver.set_credential("API_TOKEN", SECRET)
    mserver.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": mupstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    unmatched = f"https://127.0.0.1:{mupstream.port}/echo/unmatched"
    matched = f"https://localhost:{mupstream.port}/echo/matched"
    cp = mserver.cli("vault", "run", "--", CURL, "-sSk", unmatched, unmatched, matched)
    assert_clean(cp, SECRET)
    assert '"path"' in cp.stdout or "echo" in cp.stdout  # the child reached the upstream
    reports = [line for line in cp.stderr.splitlines() if "no service of vault" in line]
    assert reports == [f"agent-vault: the command reached 127.0.0.1, {HINT}"], cp.stderr

    only_matched = mserver.cli("vault", "run", "--", CURL, "-sS", matched)
    assert "no service of vault" not in only_matched.stderr
    assert "agent-vault: vault default via proxy" in only_matched.stderr

    quiet = mserver.cli("vault", "run", "--quiet", "--", CURL, "-sSk", unmatched)
    assert "agent-vault:" not in quiet.stderr and quiet.stdout


def test_settle_waits_for_the_sessions_connections_and_their_audit(
    mserver: ServerProc, mupstream: TLSUpstream
) -> None:
    """POST /v1/sessions/{id}/settle (what `vault run` calls once its child exits, instead of a fixed
    pause): it waits while a connection of the session is open, and once it says `settled` the
    connection's audit record is readable at once."""
    with mserver.http() as api:
        sess = api.post("/v1/sessions", json={"ttl_seconds": 600}).raise_for_status().json()
        sid, token = sess["id"], sess["token"]
        target = f"127.0.0.1:{mupstream.port}"  # matches no service: a raw tunnel, audited when it closes
        conn = RawConn(mserver.proxy_port)
        try:
            assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
            started = time.monotonic()
            r = api.post(f"/v1/sessions/{sid}/settle", json={"wait_seconds": 0.4})
            assert r.status_code == 200, r.text
            assert r.json() == {"id": sid, "settled": False, "open_connections": 1}
            assert time.monotonic() - started >= 0.4  # it waited for the open connection
        finally:
            conn.close()
        r = api.post(f"/v1/sessions/{sid}/settle", json={"wait_seconds": 5})
        assert r.json() == {"id": sid, "settled": True, "open_connections": 0}
        logs = api.get("/v1/vaults/default/logs", params={"kind": "proxy.*", "limit": 200}).json()["logs"]
        mine = [x for x in logs if str(x.get("actor", "")).startswith(f"session:{sid}:")]
        assert [x["decision"] for x in mine] == ["tunnel"], mine
        assert api.post(f"/v1/sessions/{sid}/settle", json={"wait_seconds": 11}).status_code == 422

    with mserver.http(mserver.make_agent("stranger")) as other:  # not its session: not even found
        assert other.post(f"/v1/sessions/{sid}/settle", json={}).status_code == 404


def test_a_session_learns_its_own_id_and_settles_itself(mserver: ServerProc) -> None:
    """README: the session itself may call settle; `/v1/auth/me` gives a session token its id."""
    with mserver.http() as api:
        sess = api.post("/v1/sessions", json={"ttl_seconds": 600}).raise_for_status().json()
    with mserver.http(sess["token"]) as own:
        me = own.get("/v1/auth/me").raise_for_status().json()
        assert me["kind"] == "session" and me["session_id"] == sess["id"], me
        r = own.post(f"/v1/sessions/{me['session_id']}/settle", json={"wait_seconds": 1})
        assert r.status_code == 200 and r.json()["settled"] is True, r.text
    with mserver.http() as api:  # a user's own answer carries no session id
        assert "session_id" not in api.get("/v1/auth/me").raise_for_status().json()
