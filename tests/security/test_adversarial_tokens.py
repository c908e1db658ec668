"""Guessing, reusing and outliving proxy tokens (SPEC §3.1, §5.2, §5.10, §7, §14.7, §14.8, §14.10).

Brute force against Proxy-Authorization; revoked, rotated, ungranted, expired and `vault run`-ended
tokens on connections that stay open; a daemon that a `vault run` child leaves behind.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import signal
import sqlite3
import ssl
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.env import fast_path_suite
from helpers.proxy import basic, wait_audit
from helpers.server import OWNER_PASSWORD as PW
from helpers.wait import wait_until
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    header_values,
    new_secret,
    proxy_error,
    start_server,
)

V: dict[str, str] = {}


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "tokens"):
        V["API_KEY"] = new_secret()
        s.set_credential("API_KEY", V["API_KEY"])
        s.add_service(
            {
                "name": "api",
                "host": "api.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_KEY"},
            }
        )
        with s.http() as c:
            c.post("/v1/vaults", json={"name": "second"}).raise_for_status()
        s.cli_login()
        yield s


def _connect(srv: SweptServer, target: str, auth: str) -> tuple[int, str]:
    with srv.raw() as conn:
        r = conn.connect(target, {"Proxy-Authorization": auth})
    if r.status == 200:
        return 200, "tunnel"
    code = proxy_error(r.status, r.headers, r.body)
    if r.status == 407:
        assert r.headers["proxy-authenticate"] == 'Basic realm="agent-vault"'
    if r.status == 429:
        assert r.json()["limiter"] == "proxy_auth" and int(r.headers["retry-after"]) >= 1
    return r.status, code


def test_token_brute_force_gets_407_then_429_and_never_in(
    srv: SweptServer, upstream_ca: trustme.CA, up: Forger
) -> None:
    real = srv.make_agent("brute-target")
    with Forger(ca=upstream_ca) as fresh:
        srv.add_service(
            {
                "name": "brute-api",
                "host": "api.upstream.test",
                "port": fresh.port,
                "auth": {"type": "bearer", "token": "API_KEY"},
            }
        )
        target = f"api.upstream.test:{fresh.port}"
        guess = basic("av_agt_" + secrets.token_urlsafe(32))
        statuses = [_connect(srv, target, guess)[0] for _ in range(36)]
        assert statuses[:30] == [407] * 30 and statuses[30:] == [429] * 6, statuses  # 30 per 5 min
        with srv.raw() as conn:  # the absolute form shares the limiter
            r = conn.request("GET", f"https://{target}/echo", {"Host": target, "Proxy-Authorization": guess})
        assert (r.status, proxy_error(r.status, r.headers, r.body)) == (429, "rate_limited")
        near_misses = [
            real[:-1],
            real + "A",
            real.upper(),
            real.swapcase(),
            real[:-1] + ("A" if real[-1] != "A" else "B"),
            " " + real,
            real.replace("av_agt_", "av_sess_"),
            real.replace("av_agt_", "av_usr_"),
            "av_agt_",
            "\x00" + real,
        ]
        guesses = [basic(t) for t in near_misses] + [
            basic("av_agt_" + secrets.token_urlsafe(32)) for _ in range(40)
        ]
        guesses += [
            f"Bearer {real[:-1]}",
            f"bearer {real.upper()}",
            "Basic " + base64.b64encode(real[:-2].encode()).decode(),
        ]
        outcomes = {_connect(srv, target, g) for g in guesses}
        assert outcomes == {(407, "proxy_auth_required")}, outcomes
        assert fresh.connection_count == 0  # nothing of that reached the upstream
        assert _connect(srv, target, basic(real)) == (200, "tunnel")  # the victim is not locked out
    with srv.agent_client(real) as c:
        assert c.get(f"https://api.upstream.test:{up.port}/echo/ok").status_code == 200


# The paths a request on an open connection can take (the token is re-checked on each of them):
# `fast`: an HTTP/1.1 client offering ALPN http/1.1 (the fast path, audit `served_by` "fast");
# `engine-h1`: a client offering no ALPN (mitmproxy's HTTP/1 layer); `h2`: httpx over HTTP/2 (the engine).
PATHS = ["fast", "engine-h1", "h2"]
Get = Callable[[str], tuple[int, dict[str, str], bytes, str]]


def _served_by(path: str) -> str | None:
    """The audit's `served_by` for `path`: with the differential suite's fast path off
    (`FASTPATH_SUITE=off`) the `fast` client is served by the engine, and must be refused all the same."""
    return "fast" if path == "fast" and fast_path_suite() != "off" else None


@contextmanager
def _open(srv: SweptServer, up: Forger, token: str, path: str) -> Iterator[Get]:
    """One open connection to the matched service on `path`; `get(p)` sends GET p on it and returns
    (status, headers, body, HTTP version)."""
    target = f"api.upstream.test:{up.port}"
    if path == "h2":
        with srv.agent_client(token, http2=True) as c:

            def h2get(p: str) -> tuple[int, dict[str, str], bytes, str]:
                r = c.get(f"https://{target}{p}")
                return r.status_code, dict(r.headers), r.content, r.http_version

            yield h2get
        return
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        tls = conn.start_tls(
            "api.upstream.test", srv.ca_bundle, alpn=["http/1.1"] if path == "fast" else None
        )
        assert tls.selected_alpn_protocol() == ("http/1.1" if path == "fast" else None)

        def h1get(p: str) -> tuple[int, dict[str, str], bytes, str]:
            r = conn.request("GET", p, {"Host": target})
            return r.status, r.headers, r.body, "HTTP/1.1"

        yield h1get


def _keepalive(
    srv: SweptServer, up: Forger, token: str, cut: Callable[[], None], code: str, path: str
) -> None:
    """One request works on `path`; `cut` happens; the next request on the same connection is refused
    with `code` and never reaches the upstream."""
    tag = secrets.token_hex(4)
    before, after = f"/echo/before-{tag}", f"/echo/after-{tag}"
    up.requests_seen.clear()
    with _open(srv, up, token, path) as get:
        status, _, _, version = get(before)
        assert status == 200 and version == ("HTTP/2" if path == "h2" else "HTTP/1.1")
        cut()
        status, headers, body, version2 = get(after)
        proxy_error(status, headers, body, code)
        assert version2 == version  # the same connection answered
    assert [r["path"] for r in up.requests_seen.snapshot()] == [before]
    rec = wait_audit(srv.home, path=before)  # the path the first request took is the one named
    assert rec.get("served_by") == _served_by(path), rec
    assert wait_audit(srv.home, path=after)["error"] == code


def _owner(srv: SweptServer, method: str, path: str, **kw: object) -> None:
    with srv.http() as c:
        c.request(method, path, **kw).raise_for_status()  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PATHS)
def test_revoked_agent_on_an_open_connection(srv: SweptServer, up: Forger, path: str) -> None:
    name = f"revoked-{path}"
    t = srv.make_agent(name)
    cut = lambda: _owner(srv, "POST", f"/v1/agents/{name}/revoke")  # noqa: E731
    _keepalive(srv, up, t, cut, "proxy_auth_required", path)


@pytest.mark.parametrize("path", PATHS)
def test_rotated_agent_old_token_on_an_open_connection(srv: SweptServer, up: Forger, path: str) -> None:
    name = f"rotated-{path}"
    t = srv.make_agent(name)

    def rotate() -> None:
        _owner(srv, "POST", f"/v1/agents/{name}/rotate", json={"password": PW, "grace_seconds": 0})

    _keepalive(srv, up, t, rotate, "proxy_auth_required", path)


@pytest.mark.parametrize("path", PATHS)
def test_deleted_agent_and_removed_grant_on_open_connections(srv: SweptServer, up: Forger, path: str) -> None:
    ungranted, deleted = f"ungranted-{path}", f"deleted-{path}"
    t = srv.make_agent(ungranted, vaults=("default", "second"))

    def ungrant() -> None:
        _owner(srv, "DELETE", f"/v1/vaults/default/agents/{ungranted}", json={"password": PW})

    _keepalive(srv, up, t, ungrant, "vault_forbidden", path)
    t2 = srv.make_agent(deleted)
    _keepalive(
        srv, up, t2, lambda: _owner(srv, "DELETE", f"/v1/agents/{deleted}"), "proxy_auth_required", path
    )


@pytest.mark.parametrize("path", PATHS)
def test_a_session_dies_with_its_creators_grant(srv: SweptServer, up: Forger, path: str) -> None:
    """SPEC §3.3: a session is a narrowing of its creator. An agent whose grant on the vault is removed
    keeps no access through the sessions it minted (open connections included)."""
    minter = f"minter-{path}"
    t = srv.make_agent(minter, vaults=("default", "second"))
    sess = srv.session(t, label="minted by an agent", ttl_seconds=3600)
    with srv.http(sess["token"]) as c:
        assert c.get("/v1/discover").status_code == 200

    def ungrant() -> None:
        _owner(srv, "DELETE", f"/v1/vaults/default/agents/{minter}", json={"password": PW})

    _keepalive(srv, up, sess["token"], ungrant, "proxy_auth_required", path)
    with srv.http(sess["token"]) as c:
        assert c.get("/v1/discover").status_code == 401
    with srv.http(t) as c:  # the agent itself still works on the vault it keeps
        assert c.get("/v1/discover", headers={"X-Vault": "second"}).status_code == 200


@pytest.mark.parametrize("path", PATHS)
def test_revoked_session_on_an_open_connection(srv: SweptServer, up: Forger, path: str) -> None:
    s = srv.session(label=f"to revoke ({path})")
    cut = lambda: _owner(srv, "DELETE", f"/v1/sessions/{s['id']}")  # noqa: E731
    _keepalive(srv, up, s["token"], cut, "proxy_auth_required", path)


def _expire_at(srv: SweptServer, session_id: int, when: datetime) -> None:
    """Set a session's expiry in the store, then let the proxy learn it (any token change reloads the
    identities). The API's minimum TTL is 300 s (domain/sessions.py MIN_TTL): too long to wait for."""
    db = sqlite3.connect(srv.home / "agent-vault.db", timeout=10)
    with db:
        stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        db.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (stamp, session_id))
    db.close()
    srv.session(label="any token change reloads the identities")


@pytest.mark.parametrize("path", PATHS)
def test_expired_session_on_an_open_connection(srv: SweptServer, up: Forger, path: str) -> None:
    s = srv.session(label=f"to expire ({path})", ttl_seconds=300)
    _keepalive(
        srv,
        up,
        s["token"],
        lambda: _expire_at(srv, s["id"], datetime(2000, 1, 1, tzinfo=UTC)),
        "proxy_auth_required",
        path,
    )
    with srv.http(s["token"]) as c:
        assert c.get("/v1/discover").status_code == 401


@pytest.mark.parametrize("path", PATHS)
def test_a_session_expires_on_an_open_connection_with_no_admin_change(
    srv: SweptServer, up: Forger, path: str
) -> None:
    """The TTL itself ends the session on an open connection: nothing reloads the identities when it
    passes, so the re-check must compare the expiry with the clock, request by request."""
    s = srv.session(label=f"natural expiry ({path})", ttl_seconds=300)
    ends = datetime.now(UTC) + timedelta(seconds=3)
    _expire_at(srv, s["id"], ends)  # the last admin change: from here on, only time passes

    def wait_for_the_expiry() -> None:
        time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.3)

    _keepalive(srv, up, s["token"], wait_for_the_expiry, "proxy_auth_required", path)


def test_a_tunnel_closes_when_its_session_expires(srv: SweptServer, up: Forger) -> None:
    """SPEC §7.1: a session's TTL is the dead-man switch. A raw tunnel has no request to re-check, so it
    is closed at the expiry itself, with no admin change to trigger it."""
    s = srv.session(label="tunnel ttl", ttl_seconds=300)
    with srv.raw() as conn:
        r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(s["token"])})
        assert r.status == 200  # localhost is no service of the vault: a raw tunnel
        conn.start_tls("localhost", srv.upstream_ca_file)
        hdrs = {"Host": f"localhost:{up.port}"}
        assert conn.request("GET", "/echo/tunnel-1", hdrs).status == 200
        # the session now ends in 2 s; one reload lets the proxy learn it
        _expire_at(srv, s["id"], datetime.now(UTC) + timedelta(seconds=2))
        assert conn.request("GET", "/echo/tunnel-2", hdrs).status == 200  # not expired yet
        time.sleep(3)  # no admin change from here on
        with pytest.raises((ConnectionError, ssl.SSLError, http.client.HTTPException, OSError)):
            conn.request("GET", "/echo/tunnel-3", hdrs)
    assert "/echo/tunnel-3" not in [r["path"] for r in up.requests_seen.snapshot()]


def test_a_tunnel_closes_when_its_session_is_revoked(srv: SweptServer, up: Forger) -> None:
    """SPEC §14.8 on a raw tunnel (an unlisted host, policy `tunnel`): no request inside it is ever
    parsed, so the revocation itself must close it, at once."""
    s = srv.session(label="tunnel revoke")
    up.requests_seen.clear()
    with srv.raw() as conn:
        r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(s["token"])})
        assert r.status == 200  # localhost is no service of the vault: a raw tunnel
        tls = conn.start_tls("localhost", srv.upstream_ca_file)  # the upstream's own certificate
        assert "trustme" in str(dict(x[0] for x in tls.getpeercert()["issuer"])["organizationName"])
        hdrs = {"Host": f"localhost:{up.port}"}
        assert conn.request("GET", "/echo/rtunnel-1", hdrs).status == 200
        _owner(srv, "DELETE", f"/v1/sessions/{s['id']}")
        t0 = time.monotonic()
        conn.sock.settimeout(3)
        with pytest.raises((ConnectionError, ssl.SSLError, http.client.HTTPException, OSError)):
            conn.request("GET", "/echo/rtunnel-2", hdrs)
        assert time.monotonic() - t0 < 1.5  # closed by the revocation, not by a timeout
    assert [r["path"] for r in up.requests_seen.snapshot()] == ["/echo/rtunnel-1"]


def test_absolute_form_keepalive_is_rechecked(srv: SweptServer, up: Forger) -> None:
    t = srv.make_agent("absolute-bot")
    target = f"api.upstream.test:{up.port}"
    with srv.raw() as conn:
        hdrs = {"Host": target, "Proxy-Authorization": basic(t)}
        assert conn.request("GET", f"https://{target}/echo/abs1", hdrs).status == 200
        _owner(srv, "POST", "/v1/agents/absolute-bot/revoke")
        r = conn.request("GET", f"https://{target}/echo/abs2", hdrs)
    assert (r.status, proxy_error(r.status, r.headers, r.body)) == (407, "proxy_auth_required")


def test_tokens_of_the_wrong_kind_or_vault(srv: SweptServer, up: Forger) -> None:
    target = f"api.upstream.test:{up.port}"
    sess = srv.session(label="default only")
    assert _connect(srv, target, basic(srv.owner_token)) == (403, "vault_forbidden")  # user logins
    assert _connect(srv, target, f"Bearer {srv.owner_token}") == (403, "vault_forbidden")
    assert _connect(srv, target, basic(sess["token"], "second")) == (403, "vault_forbidden")  # no retarget
    t = srv.make_agent("one-vault")
    assert _connect(srv, target, basic(t, "second")) == (403, "vault_forbidden")
    assert _connect(srv, target, basic(t, "no-such-vault")) == (403, "vault_forbidden")


DAEMON = textwrap.dedent('''
    """Left behind by a `vault run` child: keeps its proxy connection and tries again later."""
    import os, sys, time, pathlib, httpx
    d = pathlib.Path(sys.argv[1]); url = sys.argv[2]
    (d / "pid").write_text(str(os.getpid()))
    with httpx.Client(trust_env=True, timeout=10) as c:  # HTTPS_PROXY and SSL_CERT_FILE from vault run
        (d / "first").write_text(str(c.get(url + "/daemon-1").status_code))
        for _ in range(600):  # scenario: stay alive (connection kept) until the test says go (<= 30 s)
            if (d / "go").exists():
                break
            time.sleep(0.05)
        try:
            r = c.get(url + "/daemon-2")
            (d / "second").write_text(f"{r.status_code} {r.headers.get('x-agent-vault-proxy-error')}")
        except httpx.HTTPError as e:
            (d / "second").write_text(f"error {type(e).__name__}")
''')


def _wait_file(path: Path, timeout: float = 20) -> str:
    return wait_until(
        lambda: path.read_text() if path.exists() else "", f"{path.name} written", timeout=timeout
    )


def test_session_dies_with_vault_run_even_for_a_daemon_it_left_behind(
    srv: SweptServer, up: Forger, tmp_path: Path
) -> None:
    (tmp_path / "daemon.py").write_text(DAEMON)
    url = f"https://api.upstream.test:{up.port}/echo"
    # scenario: the `vault run` child lingers (<= 20 s) until its daemon's first request went through, so
    # that request runs while the wrapper is alive; then the wrapper exits and leaves the daemon behind
    script = (
        f"echo TOKEN=$AGENT_VAULT_TOKEN; {sys.executable} {tmp_path / 'daemon.py'} {tmp_path} {url} "
        f"</dev/null >/dev/null 2>&1 & i=0; while [ ! -s {tmp_path / 'first'} ] && [ $i -lt 400 ]; "
        "do sleep 0.05; i=$((i+1)); done"
    )
    up.requests_seen.clear()
    cp = srv.cli("vault", "run", "--quiet", "--", "sh", "-c", script)
    pid = int(_wait_file(tmp_path / "pid"))
    try:
        token = cp.stdout.split("TOKEN=", 1)[1].split()[0]
        assert token.startswith("av_sess_")
        srv.sweep.secret_token("vault run session", token)
        assert _wait_file(tmp_path / "first") == "200"  # it worked while the wrapper ran
        (tmp_path / "go").write_text("go")
        assert _wait_file(tmp_path / "second") == "407 true"  # same connection, after the wrapper exited
    finally:  # stop the daemon if it is still ours and still running
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"daemon.py" in cmdline.read_bytes():
            os.kill(pid, signal.SIGTERM)
    assert [header_values(r, "authorization") for r in up.requests_seen.snapshot()] == [
        [f"Bearer {V['API_KEY']}"]
    ]
    assert _connect(srv, f"api.upstream.test:{up.port}", basic(token)) == (407, "proxy_auth_required")
    with srv.http(token) as c:
        assert c.get("/v1/discover").status_code == 401
        assert c.post("/v1/sessions", json={"vault": "default"}).status_code == 401
    with (
        httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False) as c,
        pytest.raises(httpx.ProxyError, match="407"),
    ):
        c.get(url + "/fresh")


def test_a_token_sent_as_the_vault_name_is_not_echoed(srv: SweptServer, up: Forger) -> None:
    """An agent that puts a token where the vault name goes (`X-Vault: <token>`, or as the userinfo's
    password) gets 403 `vault_forbidden` whose message withholds it (SPEC §6: never values or tokens);
    a well-formed name that is not the agent's is still named, for the human reading the error."""
    target = f"api.upstream.test:{up.port}"
    t = srv.make_agent("vault-echo")
    for auth, vault in ((f"Bearer {t}", t), (basic(t, t), None)):
        with srv.raw() as conn:
            headers = {"Proxy-Authorization": auth} | ({"X-Vault": vault} if vault else {})
            r = conn.connect(target, headers)
        assert (r.status, proxy_error(r.status, r.headers, r.body)) == (403, "vault_forbidden")
        assert t.encode() not in r.body and b"not shown" in r.body, r.body
    with srv.raw() as conn:
        r = conn.connect(target, {"Proxy-Authorization": basic(t, "no-such-vault")})
    assert r.status == 403 and "vault no-such-vault" in r.json()["message"]
