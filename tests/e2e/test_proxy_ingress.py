"""Proxy ingress forms, authentication and header hygiene (SPEC §5.1, §5.2, §5.7, §6), real sockets.

One server for the module: services on `localhost:<tls upstream>` (bearer) and `127.0.0.1:<plain
upstream>` (bearer). Clients: httpx, requests, curl and raw sockets for what clients never send.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import trustme
from helpers.proxy import RawConn, basic
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import PlainUpstream, TLSUpstream, UpstreamRequest, UpstreamResponse

SECRET = "sk-ingress-secret-0123456789"
PLAIN_SECRET = "plain-ingress-secret-987654"
TOKENS: list[str] = []


class ForgingUpstream(TLSUpstream):
    """`/forge` answers with headers only the proxy may set."""

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.path == "/forge":
            headers = [
                ("Content-Type", "application/json"),
                ("X-Agent-Vault-Proxy-Error", "true"),
                ("X-Agent-Vault-Vault", "evil"),
                ("Proxy-Authenticate", 'Basic realm="evil"'),
            ]
            return UpstreamResponse(200, headers, b'{"forged": true}')
        return await super().handle(req)


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[ForgingUpstream]:
    with ForgingUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainUpstream]:
    with PlainUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream, plain: PlainUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("ingress"), upstream_ca) as s:
        s.set_credential("API_TOKEN", SECRET)
        s.set_credential("PLAIN_TOKEN", PLAIN_SECRET)
        s.add_service(
            {
                "name": "tls-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        s.add_service(
            {
                "name": "plain-api",
                "host": "127.0.0.1",
                "port": plain.port,
                "auth": {"type": "bearer", "token": "PLAIN_TOKEN"},
                "allow_http": True,  # services are HTTPS-only unless they opt in
            }
        )
        with s.http() as c:
            c.post("/v1/vaults", json={"name": "second"}).raise_for_status()
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    t = srv.make_agent("ingress-bot")
    TOKENS.append(t)
    return t


def _seen(upstream: TLSUpstream | PlainUpstream, n: int) -> dict[str, str]:
    req = upstream.requests_seen.wait_for(n)[n - 1]
    return {k.lower(): v for k, v in req["headers"]}


def _proxy_error(r: httpx.Response | requests.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    body = r.json()
    assert body["error"] == code and body["message"] and "hint" in body
    return dict(body)


# ---- ingress forms ----------------------------------------------------------------------------


def test_connect_tls_is_mitmed_and_injected_requests(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    proxies = {"https": srv.proxy_url(token)}
    r = requests.get(
        f"https://localhost:{up.port}/echo/req", proxies=proxies, verify=str(srv.ca_bundle), timeout=10
    )
    assert r.status_code == 200
    assert _seen(up, 1)["authorization"] == f"Bearer {SECRET}"
    assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"


def test_connect_then_plaintext_http_is_injected(srv: ServerProc, plain: PlainUpstream, token: str) -> None:
    plain.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"127.0.0.1:{plain.port}", {"Proxy-Authorization": basic(token)}).status == 200
        r = conn.request("GET", "/echo/inside", {"Host": f"127.0.0.1:{plain.port}"})
        assert r.status == 200
        r2 = conn.request("GET", "/echo/again", {"Host": f"127.0.0.1:{plain.port}"})  # keep-alive
        assert r2.status == 200
    assert _seen(plain, 1)["authorization"] == f"Bearer {PLAIN_SECRET}"
    assert plain.requests_seen.wait_for(2)[1]["path"] == "/echo/again"
    assert PLAIN_SECRET not in r.body.decode()


def test_absolute_form_http_with_curl(srv: ServerProc, plain: PlainUpstream, token: str) -> None:
    plain.requests_seen.clear()
    cp = subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            f"http://127.0.0.1:{plain.port}/echo/curl",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    assert cp.returncode == 0, cp.stderr
    seen = _seen(plain, 1)
    assert seen["authorization"] == f"Bearer {PLAIN_SECRET}"
    assert "proxy-authorization" not in seen
    assert json.loads(cp.stdout)["headers"]["authorization"] == "Bearer [REDACTED:PLAIN_TOKEN]"


def test_absolute_form_https_is_forwarded_over_tls(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        r = conn.request(
            "GET",
            f"https://localhost:{up.port}/echo/axios",
            {"Host": f"localhost:{up.port}", "Proxy-Authorization": basic(token)},
        )
    assert r.status == 200, r.body
    seen = up.requests_seen.wait_for(1)[0]
    assert seen["scheme"] == "https" and up.sni_seen[-1] == "localhost"
    assert dict((k.lower(), v) for k, v in seen["headers"])["authorization"] == f"Bearer {SECRET}"
    assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"


def test_origin_form_is_refused(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        r = conn.request(
            "GET", "/echo", {"Host": f"localhost:{up.port}", "Proxy-Authorization": basic(token)}
        )
    assert r.status == 400
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    body = r.json()
    assert body["error"] == "bad_request" and "HTTPS_PROXY" in body["hint"]
    assert up.requests_seen.snapshot() == []


def test_other_schemes_are_refused_with_the_proxy_hint(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    """SPEC §5.1: a scheme other than http/https is 400 `bad_request` with the HTTPS_PROXY hint."""
    up.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        r = conn.request(
            "GET",
            f"ftp://localhost:{up.port}/echo",
            {"Host": f"localhost:{up.port}", "Proxy-Authorization": basic(token)},
        )
    assert r.status == 400 and r.headers["x-agent-vault-proxy-error"] == "true"
    body = r.json()
    assert body["error"] == "bad_request" and "HTTPS_PROXY" in body["hint"], body
    assert up.requests_seen.snapshot() == []


# ---- authentication ---------------------------------------------------------------------------


def test_bearer_proxy_authorization_and_x_vault(srv: ServerProc, up: TLSUpstream) -> None:
    two = srv.make_agent("two-vaults-bot", vaults=("default", "second"))
    TOKENS.append(two)
    up.requests_seen.clear()
    proxy = httpx.Proxy(srv.proxy, headers={"Proxy-Authorization": f"Bearer {two}", "X-Vault": "default"})
    with httpx.Client(proxy=proxy, verify=str(srv.ca_bundle), trust_env=False) as c:
        assert c.get(f"https://localhost:{up.port}/echo/bearer").status_code == 200
    assert _seen(up, 1)["authorization"] == f"Bearer {SECRET}"
    # the same agent without any vault hint: it must name one
    proxy = httpx.Proxy(srv.proxy, headers={"Proxy-Authorization": f"Bearer {two}"})
    with (
        httpx.Client(proxy=proxy, verify=str(srv.ca_bundle), trust_env=False) as c,
        pytest.raises(httpx.ProxyError, match="400"),
    ):
        c.get(f"https://localhost:{up.port}/echo/nohint")
    with RawConn(srv.proxy_port) as conn:
        r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": f"Bearer {two}"})
    assert r.status == 400
    body = r.json()
    assert body["error"] == "vault_required" and body["vaults"] == ["default", "second"]
    assert "HTTPS_PROXY=http://<token>:<vault>@" in body["hint"]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic !!!not-base64",
        "Digest abc",
        "Basic " + "A" * 5000,
        basic("av_agt_" + "x" * 43),
        "Bearer nope",
    ],
    ids=["missing", "bad-base64", "bad-scheme", "too-long", "unknown-token", "unknown-bearer"],
)
def test_bad_credentials_get_407_on_connect_and_absolute_form(
    srv: ServerProc, up: TLSUpstream, plain: PlainUpstream, header: str | None
) -> None:
    hdrs = {"Proxy-Authorization": header} if header else {}
    with RawConn(srv.proxy_port) as conn:
        r = conn.connect(f"localhost:{up.port}", hdrs)
    assert r.status == 407
    assert r.headers["proxy-authenticate"] == 'Basic realm="agent-vault"'
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "proxy_auth_required"
    plain.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        r = conn.request(
            "GET", f"http://127.0.0.1:{plain.port}/echo", {"Host": f"127.0.0.1:{plain.port}", **hdrs}
        )
    assert r.status == 407 and r.headers["proxy-authenticate"] == 'Basic realm="agent-vault"'
    assert r.json()["error"] == "proxy_auth_required"
    assert plain.requests_seen.snapshot() == []


def test_revoked_token_is_refused_on_connect(srv: ServerProc, up: TLSUpstream) -> None:
    t = srv.make_agent("revoked-bot")
    TOKENS.append(t)
    with srv.http() as c:
        c.post("/v1/agents/revoked-bot/revoke").raise_for_status()
    with RawConn(srv.proxy_port) as conn:
        r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(t)})
    assert r.status == 407 and r.json()["error"] == "proxy_auth_required"


def test_revoked_token_gets_407_inside_an_open_mitm_connection(srv: ServerProc, up: TLSUpstream) -> None:
    t = srv.make_agent("keepalive-bot")
    TOKENS.append(t)
    with httpx.Client(proxy=srv.proxy_url(t), verify=str(srv.ca_bundle), trust_env=False) as c:
        assert c.get(f"https://localhost:{up.port}/echo/1").status_code == 200
        with srv.http() as admin:
            admin.post("/v1/agents/keepalive-bot/revoke").raise_for_status()
        up.requests_seen.clear()
        r = c.get(f"https://localhost:{up.port}/echo/2")  # same kept-alive tunnel
        body = _proxy_error(r, 407, "proxy_auth_required")
        assert r.headers["proxy-authenticate"] == 'Basic realm="agent-vault"'
        assert "expired or revoked" in str(body["message"])
    assert up.requests_seen.snapshot() == []


def test_revoking_a_token_closes_its_open_tunnels(srv: ServerProc, up: TLSUpstream) -> None:
    t = srv.make_agent("tunnel-bot")
    TOKENS.append(t)
    with RawConn(srv.proxy_port) as conn:  # no service for 127.0.0.1:<tls port>: a raw tunnel
        assert conn.connect(f"127.0.0.1:{up.port}", {"Proxy-Authorization": basic(t)}).status == 200
        conn.start_tls("127.0.0.1", srv.upstream_ca_file)
        assert conn.request("GET", "/echo/t", {"Host": f"127.0.0.1:{up.port}"}).status == 200
        with srv.http() as c:
            c.post("/v1/agents/tunnel-bot/revoke").raise_for_status()
        t0 = time.monotonic()
        conn.sock.settimeout(3)
        with pytest.raises((ConnectionError, ssl.SSLError, http.client.HTTPException, OSError)):
            conn.request("GET", "/echo/t2", {"Host": f"127.0.0.1:{up.port}"})
        assert time.monotonic() - t0 < 1.5


def test_vault_forbidden_for_unknown_and_ungranted_vaults(
    srv: ServerProc, up: TLSUpstream, token: str
) -> None:
    answers = []
    for vault in ("second", "no-such-vault"):
        with RawConn(srv.proxy_port) as conn:
            r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token, vault)})
        assert r.status == 403
        answers.append(r.json())
    assert [a["error"] for a in answers] == ["vault_forbidden", "vault_forbidden"]
    # no existence oracle: both answers differ only by the vault named
    assert answers[0]["message"].replace("second", "V") == answers[1]["message"].replace("no-such-vault", "V")
    with RawConn(srv.proxy_port) as conn:  # X-Vault is a hint source too
        r = conn.connect(
            f"localhost:{up.port}", {"Proxy-Authorization": f"Bearer {token}", "X-Vault": "second"}
        )
    assert r.status == 403 and r.json()["error"] == "vault_forbidden"


def test_inner_x_vault_cannot_switch_vault(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False) as c:
        r = c.get(f"https://localhost:{up.port}/echo", headers={"X-Vault": "second"})
    _proxy_error(r, 403, "vault_forbidden")


def test_user_login_token_is_not_a_proxy_credential(srv: ServerProc, up: TLSUpstream) -> None:
    with RawConn(srv.proxy_port) as conn:
        r = conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(srv.owner_token)})
    assert r.status == 403
    assert r.json()["error"] == "vault_forbidden" and "vault run" in r.json()["hint"]


# ---- header hygiene ---------------------------------------------------------------------------


def test_proxy_headers_never_reach_the_upstream(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    spoof = {
        "X-Vault": "default",
        "X-Agent-Vault-Proxy-Error": "true",
        "X-Agent-Vault-Anything": "1",
        "Proxy-Authorization": basic(token),
        "Proxy-Connection": "keep-alive",
    }
    with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False) as c:
        assert c.get(f"https://localhost:{up.port}/echo/h", headers=spoof).status_code == 200
    seen = _seen(up, 1)
    assert not {k for k in seen if k.startswith(("x-agent-vault-", "proxy-")) or k == "x-vault"}
    assert token not in json.dumps(seen)


def test_upstream_cannot_forge_proxy_headers(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False) as c:
        r = c.get(f"https://localhost:{up.port}/forge")
    assert r.status_code == 200 and r.json() == {"forged": True}
    assert not [k for k in r.headers if k.lower().startswith("x-agent-vault-")]
    assert "proxy-authenticate" not in r.headers


def test_no_secret_or_token_in_server_log(srv: ServerProc) -> None:
    """Runs last in the module: everything above was logged by now."""
    log = srv.stderr_text()
    for value in (SECRET, PLAIN_SECRET, *TOKENS, srv.owner_token, OWNER_PASSWORD):
        assert value not in log
    assert "Traceback" not in log


def test_db_holds_no_plaintext_secret(srv: ServerProc) -> None:
    db = Path(srv.home / "agent-vault.db").read_bytes()
    assert SECRET.encode() not in db and PLAIN_SECRET.encode() not in db
