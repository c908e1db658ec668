"""An agent tries to get a credential sent outside its service's path prefix, or over plain HTTP
(SPEC §5.4, §5.6, §5.9, §6 `invalid_path` / `insecure_scheme`, §14.3; issue #22).

Services (all against the real server process and real loopback upstreams that record what they got):

* `prefix-bearer`: `api.upstream.test` (any port), path `/echo/repos/acme`, bearer PATH_KEY.
* `prefix-subst`: `other.upstream.test:<up>`, path `/echo/repos/acme`, auth `passthrough` with
  `substitutions.keys: [SUB_KEY]`: nothing injected, but `{{SUB_KEY}}` placeholders are substituted, so
  it sends a credential too and must get the same path checks and redaction as an injecting service.
* `plain-only-https`: `127.0.0.1:<plain>` bearer PLAIN_KEY, HTTPS-only (the default).
* `plain-opted-in`: `upstream.test:<plain>` bearer PLAIN_KEY with `allow_http: true`.

For every path trick the proxy either answers 400 `invalid_path` (the upstream receives nothing) or
forwards; and whatever the upstream received carrying a credential is on a path that every reading an
upstream may apply (decode once or repeatedly, `;params` cut, `\\` as `/`, NFKC, NUL truncation,
fragment kept, `//` kept, trailing dots stripped) keeps under `/echo/repos/acme`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import trustme
from helpers.proxy import basic, wait_audit
from helpers.server import OWNER_PASSWORD
from helpers.upstream import PlainUpstream
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    carries,
    header_values,
    new_secret,
    proxy_error,
    start_server,
)

PREFIX = "/echo/repos/acme"
V: dict[str, str] = {}


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainUpstream]:
    with PlainUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    sweep: Sweep,
    up: Forger,
    plain: PlainUpstream,
) -> Iterator[SweptServer]:
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "paths"):
        V.update(PATH_KEY=new_secret(), SUB_KEY=new_secret(), PLAIN_KEY=new_secret())
        for key, value in V.items():
            s.set_credential(key, value)
        s.add_service(
            {
                "name": "prefix-bearer",
                "host": "api.upstream.test",
                "path": PREFIX,
                "auth": {"type": "bearer", "token": "PATH_KEY"},
            }
        )
        s.add_service(
            {
                "name": "prefix-subst",
                "host": "other.upstream.test",
                "port": up.port,
                "path": PREFIX,
                "auth": {"type": "passthrough"},
                "substitutions": {"keys": ["SUB_KEY"]},
            }
        )
        s.add_service(
            {
                "name": "plain-only-https",
                "host": "127.0.0.1",
                "port": plain.port,
                "auth": {"type": "bearer", "token": "PLAIN_KEY"},
            }
        )
        s.add_service(
            {
                "name": "plain-opted-in",
                "host": "upstream.test",
                "port": plain.port,
                "auth": {"type": "bearer", "token": "PLAIN_KEY"},
                "allow_http": True,
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("path-bot")


@pytest.fixture(autouse=True)
def _clear(up: Forger, plain: PlainUpstream) -> None:
    up.requests_seen.clear()
    plain.requests_seen.clear()


# ---- what an upstream may make of a request target ----------------------------------------------


def _decode_all(s: str) -> str:
    for _ in range(8):
        d = unquote(s)
        if d == s:
            break
        s = d
    return s


def _resolve(p: str, collapse: bool) -> str:
    if collapse:
        p = re.sub(r"/{2,}", "/", p)
    segs: list[str] = []
    for s in p.split("/")[1:] if p.startswith("/") else p.split("/"):
        if s == "..":
            if segs:
                segs.pop()
        elif s != ".":
            segs.append(s)
    return "/" + "/".join(segs)


def readings(target: str) -> set[str]:
    """Every path some upstream may act on for this request target (see the module docstring)."""
    path = target.split("?", 1)[0]
    out: set[str] = set()
    for frag in (path, path.split("#", 1)[0]):
        raw = re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), frag)
        for dec in (
            unquote(frag),
            _decode_all(frag),
            raw,
            re.sub(r"%u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), frag),
        ):
            for p in (dec, unicodedata.normalize("NFKC", dec)):
                p = p.split("\x00", 1)[0].replace("\\", "/")
                for q in (p, "/".join(seg.split(";", 1)[0] for seg in p.split("/"))):
                    win = "/".join(s.rstrip(". ") if s.strip(". ") else s.strip(" ") for s in q.split("/"))
                    for r in (q, win):
                        out |= {_resolve(r, collapse=False), _resolve(r, collapse=True)}
    return out


def inside(target: str) -> bool:
    return all(r == PREFIX or r.startswith(PREFIX + "/") for r in readings(target))


def attempt(srv: SweptServer, token: str, authority: str, path: str, headers: dict[str, str]) -> str:
    """CONNECT `authority`, TLS, one GET with the raw `path`: the proxy's code or the upstream status."""
    with srv.raw() as conn:
        assert conn.connect(authority, {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls(authority.rsplit(":", 1)[0], srv.ca_bundle)
        r = conn.request("GET", path, {"Host": authority, **headers})
    if r.headers.get("x-agent-vault-proxy-error"):
        return proxy_error(r.status, r.headers, r.body)
    return str(r.status)


# ---- path tricks --------------------------------------------------------------------------------------

# (path as sent, expected answer): "invalid_path" = refused before any upstream contact; "200" =
# forwarded (with the credential only if the path is inside the prefix for every reading).
TRICKS = [
    ("/echo/repos/acme/../other", "200"),  # canonical /echo/repos/other: unmatched, nothing carried
    ("/echo/repos/acme/x/../y", "invalid_path"),
    ("/echo/repos/acme/..;/other", "invalid_path"),  # Tomcat/Spring matrix parameters
    ("/echo/repos/acme/..;x=1/other", "invalid_path"),
    ("/echo/repos/acme/%2e%2e/other", "200"),  # canonical /echo/repos/other: unmatched
    ("/echo/repos/acme/%2E%2E%2Fother", "invalid_path"),
    ("/echo/repos/acme%2F..%2Fother", "200"),  # segment `acme%2F..%2Fother`: unmatched
    ("/echo/repos/acme/.%2e/", "200"),  # canonical /echo/repos/: unmatched
    ("/echo/repos/acme/%252e%252e/other", "invalid_path"),  # double encoding
    ("/echo/repos/acme/x%252F..%252F..%252Fother", "invalid_path"),
    ("/echo/repos/acme/\\..\\other", "invalid_path"),  # backslash
    ("/echo/repos/acme/..%5cother", "invalid_path"),
    ("/echo/repos/acme/..%255cother", "invalid_path"),
    ("//echo/repos/acme/x", "invalid_path"),  # empty segments
    ("/echo/repos//acme/x", "invalid_path"),
    ("/echo/repos/acme;x=1/other", "invalid_path"),  # `;` on the prefix segment
    ("/echo/repos/acme/..%00/other", "invalid_path"),  # NUL truncation leaves `/echo/repos/acme/..`
    ("/echo/repos/acme/%00", "invalid_path"),
    ("/echo/repos/acme/%ef%bc%8e%ef%bc%8e/other", "invalid_path"),  # full-width dots
    ("/echo/repos/acme/%e2%80%a5/other", "invalid_path"),  # two dot leader
    ("/echo/repos/acme/%c0%ae%c0%ae/other", "invalid_path"),  # overlong UTF-8
    ("/echo/repos/acme/%u002e%u002e/other", "invalid_path"),  # IIS %u escapes
    ("/echo/repos/%61cme/x", "invalid_path"),  # `%61cme` to a server routing on the raw path
    ("/echo/repos/acme./other", "200"),  # trailing dot on the prefix segment: unmatched
    ("/echo/repos/acme/...", "invalid_path"),
    ("/echo/repos/acme/..%20/other", "invalid_path"),
    ("/echo/repos/acme/.", "invalid_path"),
    ("/echo/repos/acme?x=/../", "200"),  # the query is not the path: matched, inside
    ("/echo/repos/acme/x?/../../other", "200"),
    ("/echo/repos/other?/echo/repos/acme/", "200"),  # unmatched
    ("/echo/repos/acme/x#/../../other", "invalid_path"),  # a fragment in a request target
    ("/echo/repos/acme/issues", "200"),
    ("/echo/repos/acme/x;v=1/y", "200"),  # params after the prefix change nothing
]


UNMATCHED = {  # TRICKS whose canonical path leaves the service's prefix
    "/echo/repos/acme/../other",
    "/echo/repos/acme/%2e%2e/other",
    "/echo/repos/acme%2F..%2Fother",
    "/echo/repos/acme/.%2e/",
    "/echo/repos/acme./other",
    "/echo/repos/other?/echo/repos/acme/",
}


def _check_deliveries(upstream: Forger, key: str) -> list[dict[str, Any]]:
    seen = upstream.requests_seen.snapshot()
    for req in seen:
        if carries(req, V[key]):
            assert inside(req["path"]), (req["path"], sorted(readings(req["path"])))
    return seen


@pytest.mark.parametrize(("path", "expected"), TRICKS)
def test_path_trick_to_an_injecting_service(
    srv: SweptServer, token: str, up: Forger, path: str, expected: str
) -> None:
    outcome = attempt(srv, token, f"api.upstream.test:{up.port}", path, {})
    seen = _check_deliveries(up, "PATH_KEY")
    assert outcome == expected, (path, outcome)
    if outcome == "invalid_path":
        assert seen == []


@pytest.mark.parametrize(("path", "expected"), TRICKS)
def test_path_trick_to_a_passthrough_service_that_substitutes(
    srv: SweptServer, token: str, up: Forger, path: str, expected: str
) -> None:
    """The same tricks with a `{{SUB_KEY}}` placeholder to a passthrough service: before issue #22 the
    path checks were skipped for it, so `..;` and friends carried the substituted value out."""
    outcome = attempt(srv, token, f"other.upstream.test:{up.port}", path, {"X-Sub": "{{SUB_KEY}}"})
    seen = _check_deliveries(up, "SUB_KEY")
    if path in UNMATCHED:  # issue #20: a placeholder headed to an unmatched target is exfiltration
        expected = "exfiltration_blocked"
    assert outcome == expected, (path, outcome)
    if outcome in ("invalid_path", "exfiltration_blocked"):
        assert seen == []


@pytest.mark.parametrize("path", ["/echo/repos/acme/\uff0e\uff0e/other", "/echo/repos/acme/caf\u00e9/x"])
def test_raw_non_ascii_paths_never_carry_a_credential(
    srv: SweptServer, token: str, up: Forger, path: str
) -> None:
    """Raw UTF-8 in a request target: full-width dots are refused; whatever else happens, nothing
    that carries the credential leaves the prefix."""
    try:
        outcome = attempt(srv, token, f"api.upstream.test:{up.port}", path, {})
    except (OSError, ValueError) as e:  # the proxy may drop a malformed request line
        outcome = f"closed ({type(e).__name__})"
    _check_deliveries(up, "PATH_KEY")
    if "\uff0e" in path:
        assert outcome in ("invalid_path", "bad_request") or outcome.startswith("closed"), outcome
        assert up.requests_seen.snapshot() == []


def test_substituted_value_is_redacted_from_the_response(srv: SweptServer, token: str, up: Forger) -> None:
    """A passthrough service that substitutes redacts like an injecting one: the echo of the
    substituted header comes back as `[REDACTED:SUB_KEY]`, never as the value."""
    with srv.agent_client(token) as c:
        r = c.get(
            f"https://other.upstream.test:{up.port}{PREFIX}/whoami",
            headers={"X-Sub": "{{SUB_KEY}}", "Accept-Encoding": "gzip"},
        )
    assert r.status_code == 200
    (req,) = up.requests_seen.snapshot()
    assert header_values(req, "x-sub") == [V["SUB_KEY"]]  # it was substituted upstream
    assert V["SUB_KEY"] not in r.text
    assert r.json()["headers"]["x-sub"] == "[REDACTED:SUB_KEY]"
    rec = wait_audit(srv.home, path=f"{PREFIX}/whoami", service="prefix-subst")
    assert rec["substituted_keys"] == ["SUB_KEY"] and rec["redacted_keys"] == ["SUB_KEY"]


# ---- scheme ---------------------------------------------------------------------------------------------


def test_absolute_form_http_to_an_https_only_service_is_refused(
    srv: SweptServer, token: str, plain: PlainUpstream
) -> None:
    before = plain.connection_count
    authority = f"127.0.0.1:{plain.port}"
    with srv.raw() as conn:
        r = conn.request(
            "GET", f"http://{authority}/echo/abs", {"Host": authority, "Proxy-Authorization": basic(token)}
        )
    assert proxy_error(r.status, r.headers, r.body, "insecure_scheme") == "insecure_scheme"
    body = r.json()
    assert body["service"] == "plain-only-https" and "--allow-http" in body["hint"]
    assert plain.connection_count == before and plain.requests_seen.snapshot() == []
    rec = wait_audit(srv.home, path="/echo/abs", error="insecure_scheme")
    assert rec["decision"] == "denied" and rec["status"] == 403 and rec["injected_keys"] == []


def test_plaintext_inside_connect_to_an_https_only_service_is_refused(
    srv: SweptServer, token: str, plain: PlainUpstream
) -> None:
    before = plain.connection_count
    authority = f"127.0.0.1:{plain.port}"
    with srv.raw() as conn:
        assert conn.connect(authority, {"Proxy-Authorization": basic(token)}).status == 200
        r = conn.request("GET", "/echo/inside", {"Host": authority})
    assert proxy_error(r.status, r.headers, r.body) == "insecure_scheme"
    assert plain.connection_count == before and plain.requests_seen.snapshot() == []
    wait_audit(srv.home, path="/echo/inside", error="insecure_scheme")


@pytest.mark.parametrize("port", ["80", "up"])
def test_plaintext_inside_connect_to_port_80_or_the_tls_port_is_refused(
    srv: SweptServer, token: str, up: Forger, port: str
) -> None:
    """`prefix-bearer` has no port: CONNECT to :80, or to the HTTPS upstream's own port, then plain
    HTTP: refused before any upstream connection (the credential would cross the wire in clear)."""
    authority = f"api.upstream.test:{80 if port == '80' else up.port}"
    before = up.connection_count
    with srv.raw() as conn:
        assert conn.connect(authority, {"Proxy-Authorization": basic(token)}).status == 200
        r = conn.request("GET", f"{PREFIX}/x", {"Host": authority})
    assert proxy_error(r.status, r.headers, r.body) == "insecure_scheme"
    assert up.connection_count == before and up.requests_seen.snapshot() == []


def test_a_service_that_opts_in_gets_plain_http(srv: SweptServer, token: str, plain: PlainUpstream) -> None:
    authority = f"upstream.test:{plain.port}"
    with srv.raw() as conn:
        r = conn.request(
            "GET", f"http://{authority}/echo/opted", {"Host": authority, "Proxy-Authorization": basic(token)}
        )
    assert r.status == 200 and not r.headers.get("x-agent-vault-proxy-error")
    (req,) = plain.requests_seen.snapshot()
    assert header_values(req, "authorization") == [f"Bearer {V['PLAIN_KEY']}"]
    assert V["PLAIN_KEY"] not in r.body.decode()


def test_https_to_the_same_service_is_unaffected(srv: SweptServer, token: str, up: Forger) -> None:
    with srv.agent_client(token) as c:
        r = c.get(f"https://api.upstream.test:{up.port}{PREFIX}/ok")
    assert r.status_code == 200
    (req,) = up.requests_seen.snapshot()
    assert header_values(req, "authorization") == [f"Bearer {V['PATH_KEY']}"]


def test_cli_allow_http_flag(srv: SweptServer) -> None:
    """`vault service add --allow-http` stores the opt-in; `set --https-only` takes it back."""
    pw = OWNER_PASSWORD + "\n"
    srv.cli_login()
    common = ("--host", "cli.upstream.test", "--auth-type", "bearer", "--token-key", "PLAIN_KEY")
    out = srv.cli(
        "vault", "service", "add", "cli-plain", *common, "--allow-http", "--password-stdin", input=pw
    )
    assert "plain http://" in out.stdout
    with srv.http() as c:
        assert c.get("/v1/vaults/default/services/cli-plain").json()["allow_http"] is True
    srv.cli("vault", "service", "set", "cli-plain", "--https-only", "--password-stdin", input=pw)
    with srv.http() as c:
        assert c.get("/v1/vaults/default/services/cli-plain").json()["allow_http"] is False
    srv.cli("vault", "service", "remove", "cli-plain", "--yes", "--password-stdin", input=pw)
