"""Encoded hosts, userinfo tricks, IP literal forms and path traversal (SPEC §5.4, §5.10, §6, §14.3, §14.5).

Services: `api.upstream.test:<up>` (VICTIM_KEY), `127.0.0.1:<up>` (IP_KEY) and `other.upstream.test:<up>`
under `/echo/api` only (PREFIX_KEY). The server allows exactly 127.0.0.1/32, so every other loopback,
unspecified, private or metadata address must be refused by the SSRF guard however it is spelled.

For every attempt: a credential only ever reaches the host (and path prefix) of its service, the
attacker's server receives none, the proxy answers either with the upstream's answer or with a SPEC §6
error (JSON, `X-Agent-Vault-Proxy-Error`), and the server neither dies nor logs a traceback.
"""

from __future__ import annotations

import http.client
import posixpath
import ssl
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import trustme
from helpers.proxy import basic
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    carries,
    never_sent,
    new_secret,
    proxy_error,
    start_server,
)

V: dict[str, str] = {}
CLOSED = (ssl.SSLError, OSError, http.client.HTTPException, ValueError, IndexError)


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    for s in start_server(
        tmp_path_factory,
        upstream_ca,
        sweep,
        "hosts",
        allow_net=False,
        extra_args=("--allow-net", "127.0.0.1/32"),
    ):
        V.update(VICTIM_KEY=new_secret(), IP_KEY=new_secret("/+="), PREFIX_KEY=new_secret())
        for key, value in V.items():
            s.set_credential(key, value)
        s.add_service(
            {
                "name": "victim-api",
                "host": "api.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "VICTIM_KEY"},
            }
        )
        s.add_service(
            {
                "name": "ip-api",
                "host": "127.0.0.1",
                "port": up.port,
                "auth": {"type": "bearer", "token": "IP_KEY"},
            }
        )
        s.add_service(
            {
                "name": "prefix-api",
                "host": "other.upstream.test",
                "port": up.port,
                "path": "/echo/api",
                "auth": {"type": "api-key", "key": "PREFIX_KEY", "header": "X-Key"},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("hosts-bot")


@pytest.fixture(autouse=True)
def _deliveries(up: Forger, evil: Forger) -> Iterator[None]:
    """After every attempt: each value reached only its own service's host (and prefix)."""
    up.requests_seen.clear()
    evil.requests_seen.clear()
    yield
    never_sent(evil, *V.values())
    for req in up.requests_seen.snapshot():
        if carries(req, V["VICTIM_KEY"]):
            assert req["authority"] == f"api.upstream.test:{up.port}", req
        if carries(req, V["IP_KEY"]):
            assert req["authority"] == f"127.0.0.1:{up.port}", req
        if carries(req, V["PREFIX_KEY"]):
            assert req["authority"] == f"other.upstream.test:{up.port}", req
            assert inside_prefix(req["path"], "/echo/api"), req["path"]


def inside_prefix(target: str, prefix: str) -> bool:
    """Whether the path an upstream acts on (percent-decoded once as RFC 3986 servers do, `\\` taken as
    `/` as some servers do, dot segments resolved) is under `prefix` on whole segments. Double encoding
    (`%252e`) and `;` path parameters are not dot segments (SPEC §5.4) and stay as they are."""
    path = unquote(target.split("?", 1)[0]).replace("\\", "/")
    path = posixpath.normpath(path)
    return path == prefix or path.startswith(prefix + "/")


def _answer(status: int, headers: dict[str, str], body: bytes) -> str:
    """An answer the agent may get: the upstream's own (it carries no proxy header) or a SPEC §6 error."""
    low = {k.lower(): v for k, v in headers.items()}
    if "x-agent-vault-proxy-error" in low or status in (407, 502, 504) or status >= 500:
        return proxy_error(status, headers, body)
    assert status < 500, (status, body[:200])
    return str(status)


def connect_attempt(srv: SweptServer, token: str, target: str, path: str = "/echo/x") -> str:
    """CONNECT `target`, then TLS and one GET; returns the proxy's code or the upstream's status."""
    with srv.raw() as conn:
        try:
            r = conn.connect(target, {"Proxy-Authorization": basic(token)})
        except CLOSED as e:
            return f"closed ({type(e).__name__})"
        if r.status != 200:
            return _answer(r.status, r.headers, r.body)
        try:
            conn.start_tls("api.upstream.test", srv.ca_bundle)
            resp = conn.request("GET", path, {"Host": target})
        except CLOSED as e:
            return f"closed after CONNECT ({type(e).__name__})"
    return _answer(resp.status, resp.headers, resp.body)


def absolute_attempt(srv: SweptServer, token: str, url: str, host: str) -> str:
    with srv.raw() as conn:
        try:
            r = conn.request("GET", url, {"Host": host, "Proxy-Authorization": basic(token)})
        except CLOSED as e:
            return f"closed ({type(e).__name__})"
    return _answer(r.status, r.headers, r.body)


CONNECT_TARGETS = [
    "API.UPSTREAM.TEST:{up}",
    "api.upstream.test.:{up}",
    "Api.Upstream.Test.:{up}",
    "[api.upstream.test]:{up}",
    "api.upstream.test@evil.upstream.test:{evil}",
    "evil.upstream.test@api.upstream.test:{up}",
    "api.upstream.test:{up}@evil.upstream.test:{evil}",
    "api.upstream.test:{up}:{evil}",
    "api%2eupstream%2etest:{up}",
    "api.upstream.test%00.evil.upstream.test:{evil}",
    "api.upstream.test.evil.upstream.test:{evil}",
    "evil.upstream.test:{evil}/api.upstream.test",
    "evil.upstream.test:{evil}#api.upstream.test",
    "evil.upstream.test:{evil}\\api.upstream.test",
    "api.upstream.test/..:{up}",
    "..:{up}",
    "\u0430pi.upstream.test:{up}",  # Cyrillic a: another name (punycode), never the service
    "xn--pi-7kc.upstream.test:{up}",
    "api\u3002upstream\u3002test:{up}",  # ideographic full stops: IDNA maps them to dots
    "ａｐｉ.upstream.test:{up}",  # fullwidth letters: UTS-46 maps them to ASCII
    "2130706433:{up}",
    "0x7f000001:{up}",
    "0177.0.0.1:{up}",
    "0x7f.1:{up}",
    "127.1:{up}",
    "127.000.000.001:{up}",
    "[::ffff:127.0.0.1]:{up}",
    "[::ffff:7f00:1]:{up}",
    "[0:0:0:0:0:ffff:127.0.0.1]:{up}",
    "api.upstream.test:0{up}",
    "api.upstream.test:+{up}",
    "api.upstream.test:{up}0",
    "api.upstream.test:99999",
    "api.upstream.test:-1",
    " api.upstream.test:{up}",
    "api.upstream.test :{up}",
    "a" * 300 + ":{up}",
    ":{up}",
]


@pytest.mark.parametrize("target", CONNECT_TARGETS)
def test_connect_target_spellings(
    srv: SweptServer, token: str, up: Forger, evil: Forger, target: str
) -> None:
    outcome = connect_attempt(srv, token, target.format(up=up.port, evil=evil.port))
    srv.sweep.record(f"outcome of CONNECT {target!r}", outcome)  # (no secret: names only)
    assert srv.alive(), outcome


ABSOLUTE_URLS = [
    ("https://api.upstream.test@evil.upstream.test:{evil}/echo/u1", "evil.upstream.test:{evil}"),
    ("https://api.upstream.test:{up}@evil.upstream.test:{evil}/echo/u2", "api.upstream.test:{up}"),
    ("https://evil.upstream.test:{evil}\\@api.upstream.test:{up}/echo/u3", "api.upstream.test:{up}"),
    ("https://evil.upstream.test:{evil}#@api.upstream.test:{up}/echo/u4", "api.upstream.test:{up}"),
    ("https://evil.upstream.test:{evil}?@api.upstream.test:{up}/echo/u5", "api.upstream.test:{up}"),
    ("https://evil.upstream.test:{evil}/echo/u6?host=api.upstream.test", "api.upstream.test:{up}"),
    ("https://API.UPSTREAM.TEST.:{up}/echo/u7", "evil.upstream.test:{evil}"),
    ("https://[api.upstream.test]:{up}/echo/u8", "api.upstream.test:{up}"),
    ("https://api%2eupstream%2etest:{up}/echo/u9", "api.upstream.test:{up}"),
    ("https://api.upstream.test%2f@evil.upstream.test:{evil}/echo/u10", "api.upstream.test:{up}"),
    ("https://2130706433:{up}/echo/u11", "api.upstream.test:{up}"),
    ("https://0x7f.0.0.1:{up}/echo/u12", "evil.upstream.test:{evil}"),
    ("https://[::ffff:127.0.0.1]:{up}/echo/u13", "api.upstream.test:{up}"),
    ("https://\u0430pi.upstream.test:{up}/echo/u14", "api.upstream.test:{up}"),
    ("https://:{up}/echo/u15", "api.upstream.test:{up}"),
    ("https:///echo/u16", "api.upstream.test:{up}"),
    ("https://api.upstream.test:{up}:{evil}/echo/u17", "api.upstream.test:{up}"),
    ("HTTPS://api.upstream.test:{up}/echo/u18", "evil.upstream.test:{evil}"),
    ("ftp://api.upstream.test:{up}/echo/u19", "api.upstream.test:{up}"),
    ("//api.upstream.test:{up}/echo/u20", "api.upstream.test:{up}"),
]


@pytest.mark.parametrize(("url", "host"), ABSOLUTE_URLS)
def test_absolute_form_spellings(
    srv: SweptServer, token: str, up: Forger, evil: Forger, url: str, host: str
) -> None:
    outcome = absolute_attempt(
        srv, token, url.format(up=up.port, evil=evil.port), host.format(up=up.port, evil=evil.port)
    )
    srv.sweep.record(f"outcome of GET {url!r}", outcome)
    assert srv.alive(), outcome


SSRF_TARGETS = [
    "127.0.0.2",
    "2130706434",
    "0x7f000002",
    "0177.0.0.2",
    "127.2",
    "[::1]",
    "[::ffff:127.0.0.2]",
    "[::127.0.0.2]",
    "0.0.0.0",
    "0",
    "0x0",
    "[::]",
    "[::ffff:0.0.0.0]",
    "10.0.0.1",
    "012.0.0.1",
    "167772161",
    "192.168.1.1",
    "172.16.0.1",
    "100.64.0.1",
    "169.254.169.254",
    "0xa9fea9fe",
    "2852039166",
    "0251.0376.0251.0376",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[fd00:ec2::254]",
    "100.100.100.200",
    "[fe80::1]",
    "224.0.0.1",
    "240.0.0.1",
    "[2002:7f00:2::]",
]


@pytest.mark.parametrize("host", SSRF_TARGETS)
def test_blocked_addresses_in_every_spelling(srv: SweptServer, token: str, up: Forger, host: str) -> None:
    """Only 127.0.0.1/32 is allowed: any other spelling of a blocked class is refused before any
    connection, as a tunnel (CONNECT answer) and as an absolute-form request."""
    before = up.connection_count
    with srv.raw() as conn:
        r = conn.connect(f"{host}:{up.port}", {"Proxy-Authorization": basic(token)})
    assert proxy_error(r.status, r.headers, r.body) == "ssrf_blocked", r.body
    assert r.json()["address_class"] and r.json()["address"]
    with srv.raw() as conn:
        r = conn.request(
            "GET",
            f"http://{host}:{up.port}/echo/ssrf",
            {"Host": f"{host}:{up.port}", "Proxy-Authorization": basic(token)},
        )
    assert proxy_error(r.status, r.headers, r.body) == "ssrf_blocked", r.body
    assert up.connection_count == before


TRAVERSALS = [
    "/echo/api/../secret",
    "/echo/api/%2e%2e/secret",
    "/echo/api/%2E%2E/secret",
    "/echo/api/.%2e/secret",
    "/echo/api/%2e./secret",
    "/echo/api/./x",
    "/echo/api/%2e/x",
    "/echo/api%2f..%2fsecret",
    "/echo/api/..%2fsecret",
    "/echo/api/..%5csecret",
    "/echo/api/..\\secret",
    "/echo/api\\..\\secret",
    "/echo/api/%252e%252e/secret",
    "/echo/api/%25252e%25252e/secret",
    "/echo/api;/../secret",
    "/echo/api/..;/secret",
    "/echo/api/%c0%ae%c0%ae/secret",
    "/echo/api/x/../../../secret",
    "/echo/api/..",
    "/echo/api/%2e%2e",
    "/echo/api/%2e%2e%2fsecret",
    "/echo/api/%u002e%u002e/secret",
    "//echo/api/../secret",
    "/echo/api//../secret",
    "/echo/api/.../secret",
    "/echo/api/%09../secret",
    "/echo/api?/../../secret",
    "/echo/api#/../../secret",
    "/echo/api/%2e%2e/%2e%2e/secret",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_out_of_a_prefix(srv: SweptServer, token: str, up: Forger, path: str) -> None:
    """prefix-api only covers `/echo/api`: no spelling gets PREFIX_KEY sent outside it (checked by
    `_deliveries`), and a dot or encoded-slash path to it is refused with `invalid_path`, not passed."""
    outcome = connect_attempt(srv, token, f"other.upstream.test:{up.port}", path)
    assert outcome in ("invalid_path", "bad_request", "200", "404") or outcome.startswith("closed"), outcome
    for req in up.requests_seen.snapshot():
        if not inside_prefix(req["path"], "/echo/api"):
            assert not carries(req, V["PREFIX_KEY"]), req


def test_server_survived_everything_without_a_traceback(srv: SweptServer, token: str, up: Forger) -> None:
    assert srv.alive()
    with srv.agent_client(token) as c:  # and still works
        assert c.get(f"https://api.upstream.test:{up.port}/echo/ok").status_code == 200
    log = srv.stderr_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("alpn", [["http/1.1"], None], ids=["http1-alpn", "no-alpn"])
def test_absolute_form_inside_a_tunnel_goes_on_in_origin_form(
    srv: SweptServer, token: str, up: Forger, alpn: list[str] | None
) -> None:
    """`GET https://host/path` inside CONNECT: an origin server routes by the request line's authority
    before Host (RFC 9112 §3.2.2), so forwarded as it came, the agent would choose which virtual host of
    the upstream gets the credential injected for the CONNECT target. The upstream gets the origin form;
    a URL naming another host than the tunnel's is refused (400) and nothing is forwarded. ALPN
    `http/1.1` takes the fast path, no ALPN the engine."""
    target = f"api.upstream.test:{up.port}"
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("api.upstream.test", srv.ca_bundle, alpn)
        same = conn.request("GET", f"https://{target}/echo/same?q=1", {"Host": target})
        other = conn.request("GET", f"https://evil.upstream.test:{up.port}/echo/steal", {"Host": target})
        no_port = conn.request("GET", "https://api.upstream.test/echo/port", {"Host": target})
    assert same.status == 200, same.body[:200]
    assert [r["path"] for r in up.requests_seen.wait_for(1)] == ["/echo/same?q=1"]
    assert carries(up.requests_seen.snapshot()[0], V["VICTIM_KEY"])
    for refused in (other, no_port):  # (without a port the URL means 443, not the tunnel's port)
        assert refused.status == 400, refused.body[:200]
        assert proxy_error(refused.status, refused.headers, refused.body) == "bad_request"
    assert len(up.requests_seen.snapshot()) == 1
