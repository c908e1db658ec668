"""CONNECT decisions, request decisions, Host/SNI spoofing and fail-closed errors (SPEC §5.3, §5.4, §6,
§14.5, §14.7), real sockets.

Names `api.upstream.test` and `other.upstream.test` resolve to 127.0.0.1 inside the server only
(AGENT_VAULT_RESOLVE); the TLS upstream's certificate covers them. `localhost:<port>` is matched
(bearer, with a narrower disabled rule), `upstream.test` has a GET-only rule, `other.upstream.test` is
matched by nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from helpers.env import fast_path_suite
from helpers.proxy import RawConn, audit_records, basic, free_port, wait_audit
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream, download_payload
from helpers.wait import wait_until

SECRET = "sk-decisions-secret-424242"
CORRUPT = "corrupt-secret-value-31337"
NAMES = ("api", "other", "egress-boom", "body-boom")
RESOLVE = ",".join(f"{n}.upstream.test=127.0.0.1" for n in NAMES) + ",upstream.test=127.0.0.1"
TOKENS: list[str] = []

# Faults planted in the server process (sitecustomize, only with AV_TEST_FAULT set): each raises an
# unexpected exception whose message carries the credential value, at one point of the request path --
#   the decision (`decide`), path /echo/boom...;
#   the egress address check of the request phase (`Egress.address` called from `RequestPhase.headers`;
#     the dial's own call is left alone, so a request let through would really reach the upstream),
#     host egress-boom.upstream.test;
#   right after the injection was applied to the request (`inject.apply_injection`), path /echo/fault-inj...;
#   the request-body hook, after the body's placeholders were substituted (`inject.substitute_body`),
#     a body holding `fault-body`.
FAULT_HOOK = """
import os
import sys
if os.environ.get("AV_TEST_FAULT"):
    import agent_vault.proxy.request_phase as _phase
    from agent_vault.proxy import inject as _inject
    from agent_vault.proxy.ssrf import Egress as _Egress
    _decide = _phase.decide

    def decide(view, ident, host, port, method, path, *rest):
        if path.startswith("/echo/boom"):
            raise RuntimeError("unexpected failure carrying " + view.values.get("API_TOKEN", ""))
        return _decide(view, ident, host, port, method, path, *rest)

    _phase.decide = decide
    _address = _Egress.address

    def address(self, host, port):
        if host == "egress-boom.upstream.test" and sys._getframe(1).f_code.co_name == "headers":
            raise RuntimeError("egress check failed for " + host)
        return _address(self, host, port)

    _Egress.address = address
    _apply = _inject.apply_injection

    def apply_injection(headers, path, inj):
        new_path = _apply(headers, path, inj)
        if path.startswith("/echo/fault-inj"):
            raise RuntimeError("failure after injecting " + repr(list(headers.items())))
        return new_path

    _inject.apply_injection = apply_injection
    _substitute = _inject.substitute_body

    def substitute_body(body, *rest):
        new, used = _substitute(body, *rest)
        if b"fault-body" in body:
            raise RuntimeError("failure after substituting " + new.decode("latin-1"))
        return new, used

    _inject.substitute_body = substitute_body
"""


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("decisions")
    (tmp / "fault").mkdir()
    (tmp / "fault" / "sitecustomize.py").write_text(FAULT_HOOK)
    env = {"AGENT_VAULT_RESOLVE": RESOLVE, "AV_TEST_FAULT": "1", "PYTHONPATH": str(tmp / "fault")}
    with ServerProc(tmp, upstream_ca, env=env) as s:
        s.set_credential("API_TOKEN", SECRET)
        s.add_service(
            {
                "name": "local-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        s.add_service(
            {
                "name": "get-only",
                "host": "upstream.test",
                "port": up.port,
                "path": "/echo/getonly",
                "methods": ["GET", "HEAD"],
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        s.add_service(
            {
                "name": "switched-off",
                "host": "localhost",
                "port": up.port,
                "path": "/echo/disabled",
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        s.add_service(
            {
                "name": "egress-fault",
                "host": "egress-boom.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        s.add_service(
            {
                "name": "body-fault",
                "host": "body-boom.upstream.test",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
                "substitutions": {"keys": ["API_TOKEN"], "in": ["body"]},
            }
        )
        with s.http() as c:
            c.patch(
                "/v1/vaults/default/services/switched-off",
                json={"password": OWNER_PASSWORD, "enabled": False},
            ).raise_for_status()
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    t = srv.make_agent("decisions-bot")
    TOKENS.append(t)
    return t


@pytest.fixture
def client(srv: ServerProc, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
    ) as c:
        yield c


@contextmanager
def vault_settings(srv: ServerProc, **settings: str) -> Iterator[None]:
    """PATCH the default vault (applies without restart), restore the defaults afterwards."""
    with srv.http() as c:
        c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, **settings}).raise_for_status()
        try:
            yield
        finally:
            c.patch(
                "/v1/vaults/default",
                json={"password": OWNER_PASSWORD, "unmatched_policy": "tunnel", "enforcement": "enforce"},
            ).raise_for_status()


def _err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert body["error"] == code, body
    return body


def _auth_seen(up: TLSUpstream, n: int = 1) -> str | None:
    req = up.requests_seen.wait_for(n)[n - 1]
    return dict((k.lower(), v) for k, v in req["headers"]).get("authorization")


def _issuer(tls: Any) -> str:
    """The issuer's organization: `agent-vault` for MITM leaves, `trustme` for the upstream's own."""
    return str(dict(x[0] for x in tls.getpeercert()["issuer"])["organizationName"])


# ---- CONNECT decision -------------------------------------------------------------------------


def test_unmatched_host_is_a_raw_tunnel_by_default(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:
        assert (
            conn.connect(f"other.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)}).status
            == 200
        )
        tls = conn.start_tls("other.upstream.test", srv.upstream_ca_file)  # the upstream's OWN certificate
        assert _issuer(tls).startswith("trustme")
        r = conn.request(
            "GET",
            "/echo/tunnel",
            {"Host": f"other.upstream.test:{up.port}", "Authorization": "Bearer agent-own"},
        )
    assert r.status == 200
    assert _auth_seen(up) == "Bearer agent-own"  # nothing injected, nothing stripped
    rec = wait_audit(srv.home, kind="proxy.tunnel", host="other.upstream.test")
    assert rec["decision"] == "tunnel" and rec["actor"] == "agent:decisions-bot"
    assert rec["bytes_up"] > 0 and rec["bytes_down"] > len(r.body)  # TLS records, both ways


def test_tunnel_relays_large_bodies_both_ways_intact(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    """A tunnel's relay is spliced off the layer stack once both sides are open: megabytes each
    way arrive byte-exact, several requests share the tunnel, and the audit counts every byte."""
    upload = os.urandom(3 << 20)
    with RawConn(srv.proxy_port, timeout=30) as conn:
        assert (
            conn.connect(f"other.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)}).status
            == 200
        )
        conn.start_tls("other.upstream.test", srv.upstream_ca_file)
        host = {"Host": f"other.upstream.test:{up.port}"}
        echoed = conn.request("POST", "/echo/big", host, body=upload)
        down = conn.request("GET", "/download?bytes=5000000", host)
        again = conn.request("GET", "/status/204", host)
    assert echoed.status == 200 and echoed.json()["body_length"] == len(upload)
    assert down.status == 200 and down.body == download_payload(5_000_000)
    assert again.status == 204

    def big_tunnels() -> list[dict[str, Any]]:  # the record is written when the client disconnects
        recs = audit_records(srv.home, kind="proxy.tunnel", host="other.upstream.test")
        return [r for r in recs if r["bytes_up"] > len(upload)]

    recs = wait_until(big_tunnels, "the tunnel's audit record with the upload's bytes", timeout=5)
    assert recs[-1]["bytes_down"] > 5_000_000, recs


def test_passthrough_policy_mitms_without_injection(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with vault_settings(srv, unmatched_policy="passthrough"), RawConn(srv.proxy_port) as conn:
        assert (
            conn.connect(f"other.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)}).status
            == 200
        )
        tls = conn.start_tls("other.upstream.test", srv.ca_bundle)
        assert _issuer(tls) == "agent-vault"
        r = conn.request(
            "GET", "/echo/pt", {"Host": f"other.upstream.test:{up.port}", "Authorization": "Bearer agent-own"}
        )
    assert r.status == 200 and _auth_seen(up) == "Bearer agent-own"
    assert wait_audit(srv.home, path="/echo/pt")["decision"] == "unmatched_passthrough"


def test_deny_policy_answers_inside_tls_and_never_dials(
    srv: ServerProc, upstream_ca: trustme.CA, client: httpx.Client
) -> None:
    with TLSUpstream(ca=upstream_ca) as fresh, vault_settings(srv, unmatched_policy="deny"):
        r = client.get(f"https://other.upstream.test:{fresh.port}/v1/things")
        body = _err(r, 403, "service_not_allowed")
        hint = body["proposal_hint"]
        assert hint["host"] == "other.upstream.test" and hint["port"] == fresh.port
        assert hint["endpoint"] == "POST /v1/proposals"
        assert hint["discover"].endswith("/v1/discover")
        assert set(hint["supported_auth_types"]) >= {"bearer", "basic", "api-key", "custom", "passthrough"}
        assert fresh.connection_count == 0


def test_dry_run_forwards_what_it_would_deny(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    up.requests_seen.clear()
    with vault_settings(srv, unmatched_policy="deny", enforcement="dry-run"):
        r = client.get(
            f"https://other.upstream.test:{up.port}/echo/dry", headers={"Authorization": "Bearer own"}
        )
        assert r.status_code == 200 and _auth_seen(up) == "Bearer own"
        rec = wait_audit(srv.home, path="/echo/dry")
        assert rec["decision"] == "would_deny" and rec["would_deny_code"] == "service_not_allowed"
        r = client.post(
            f"https://upstream.test:{up.port}/echo/getonly/x", headers={"Authorization": "Bearer own"}
        )
        assert r.status_code == 200 and _auth_seen(up, 2) == "Bearer own"  # forwarded, not injected
        assert wait_audit(srv.home, path="/echo/getonly/x")["would_deny_code"] == "method_not_allowed"


# ---- request decisions ------------------------------------------------------------------------


def test_disabled_service(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    up.requests_seen.clear()
    body = _err(client.get(f"https://localhost:{up.port}/echo/disabled/x"), 403, "service_disabled")
    assert body["service"] == "switched-off"
    assert up.requests_seen.snapshot() == []


def test_method_not_allowed(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    up.requests_seen.clear()
    body = _err(
        client.post(f"https://upstream.test:{up.port}/echo/getonly/y", json={}), 403, "method_not_allowed"
    )
    assert body["service"] == "get-only" and body["allowed_methods"] == ["GET", "HEAD"]
    assert client.get(f"https://upstream.test:{up.port}/echo/getonly/y").status_code == 200
    assert len(up.requests_seen.snapshot()) == 1


@pytest.mark.parametrize(
    "path", ["/echo/api/../x", "/echo/api/%2e%2e/x", "/echo/api%2Fx", "/echo/a/%2E/b", "/a%5cb"]
)
def test_invalid_path_to_an_injecting_service(
    srv: ServerProc, up: TLSUpstream, token: str, path: str
) -> None:
    up.requests_seen.clear()
    cp = subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "--path-as-is",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(srv.ca_bundle),
            "-w",
            "\n%{http_code}",
            f"https://localhost:{up.port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    body, _, code = cp.stdout.rpartition("\n")
    assert code == "400", cp.stdout + cp.stderr
    assert '"invalid_path"' in body
    assert up.requests_seen.snapshot() == []


# ---- Host and SNI spoofing --------------------------------------------------------------------


def test_host_header_never_decides_injection(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with RawConn(srv.proxy_port) as conn:  # matched target, Host names an unmatched one
        conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)})
        conn.start_tls("localhost", srv.ca_bundle)
        assert conn.request("GET", "/echo/a", {"Host": f"other.upstream.test:{up.port}"}).status == 200
    seen = up.requests_seen.wait_for(1)[0]
    assert _auth_seen(up) == f"Bearer {SECRET}"
    assert seen["authority"] == f"localhost:{up.port}"  # forwarded Host is the target
    with vault_settings(srv, unmatched_policy="passthrough"), RawConn(srv.proxy_port) as conn:
        conn.connect(f"other.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)})
        conn.start_tls("other.upstream.test", srv.ca_bundle)
        assert conn.request("GET", "/echo/b", {"Host": f"localhost:{up.port}"}).status == 200
    assert _auth_seen(up, 2) is None
    assert up.requests_seen.snapshot()[1]["authority"] == f"other.upstream.test:{up.port}"


def test_sni_never_decides_injection_nor_upstream_verification(
    srv: ServerProc, up: TLSUpstream, token: str
) -> None:
    up.requests_seen.clear()
    up.sni_seen.clear()
    with RawConn(srv.proxy_port) as conn:  # CONNECT to the matched host, SNI of another
        conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)})
        tls = conn.start_tls("other.upstream.test", srv.ca_bundle)
        assert _issuer(tls) == "agent-vault"
        assert conn.request("GET", "/echo/sni", {"Host": f"localhost:{up.port}"}).status == 200
    assert _auth_seen(up) == f"Bearer {SECRET}"
    assert up.sni_seen == ["localhost"]  # upstream TLS used the CONNECT target
    with RawConn(srv.proxy_port) as conn:  # unmatched CONNECT with the matched host's SNI: a tunnel
        conn.connect(f"other.upstream.test:{up.port}", {"Proxy-Authorization": basic(token)})
        tls = conn.start_tls("localhost", srv.upstream_ca_file)
        assert _issuer(tls).startswith("trustme")
        assert conn.request("GET", "/echo/sni2", {"Host": f"localhost:{up.port}"}).status == 200
    assert _auth_seen(up, 2) is None


# ---- fail closed ------------------------------------------------------------------------------


def test_unexpected_error_fails_closed(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    up.requests_seen.clear()
    before = up.connection_count
    body = _err(client.get(f"https://localhost:{up.port}/echo/boom"), 502, "internal")
    incident = body["incident"]
    assert incident and SECRET not in str(body)
    assert up.requests_seen.snapshot() == [] and up.connection_count == before
    wait_until(lambda: incident in srv.stderr_text(), f"incident {incident} in the server log", timeout=5)
    assert client.get(f"https://localhost:{up.port}/echo/fine").status_code == 200  # connection still usable


FAULTS = {  # fault point -> (method, host, path, body) of a request that meets it
    "body-hook": (
        "POST",
        "body-boom.upstream.test",
        "/echo/fault",
        b'{"key": "{{API_TOKEN}}", "m": "fault-body"}',
    ),
    "egress-check": ("GET", "egress-boom.upstream.test", "/echo/fault-egress", b""),
    "after-injection": ("GET", "localhost", "/echo/fault-inj", b""),
}
CLIENTS = ["fast", "engine-h1", "h2"]


def _faulty_request(
    srv: ServerProc, token: str, client: str, method: str, target: str, path: str, body: bytes, tmp: Path
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: httpx (ALPN http/1.1, the fast path), a raw TLS client offering
    no ALPN (the engine's HTTP/1), or curl --http2 (the engine's HTTP/2)."""
    ctype = {"Content-Type": "application/json"} if body else {}
    if client == "fast":
        with httpx.Client(
            proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
        ) as c:
            r = c.request(method, f"https://{target}{path}", content=body or None, headers=ctype)
            assert r.http_version == "HTTP/1.1"
            return r.status_code, dict(r.headers), r.content
    if client == "engine-h1":
        with RawConn(srv.proxy_port) as conn:
            assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
            tls = conn.start_tls(target.rsplit(":", 1)[0], srv.ca_bundle)
            assert tls.selected_alpn_protocol() is None
            r = conn.request(method, path, {"Host": target, **ctype}, body=body)
            return r.status, r.headers, r.body
    head = tmp / "h2-headers.txt"
    cp = subprocess.run(
        [
            "/usr/bin/curl", "-sS", "--http2", "-X", method, "-x", srv.proxy,
            "--proxy-user", f"{token}:default", "--cacert", str(srv.ca_bundle),
            "-D", str(head), "-w", "\n%{http_code} %{http_version}",
            *(["-H", "Content-Type: application/json", "--data-binary", body.decode()] if body else []),
            f"https://{target}{path}",
        ],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"},
    )  # fmt: skip
    out, _, tail = cp.stdout.rpartition("\n")
    status, version = tail.split()
    assert version == "2", cp.stdout + cp.stderr  # HTTP/2 inside the tunnel: the engine
    inner = head.read_bytes().decode().split("\r\n\r\n")[-2]  # the CONNECT answer's headers come first
    headers = dict(line.split(": ", 1) for line in inner.splitlines()[1:] if ": " in line)
    return int(status), headers, out.encode()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_anywhere_in_the_request_path_fails_closed(
    srv: ServerProc, up: TLSUpstream, token: str, tmp_path: Path, fault: str, client: str
) -> None:
    """SPEC §14.5 at more fault points than the decision, on every path: the body hook (a value already
    substituted into the body), the egress check, right after the injection (the value already in the
    headers). Each answer is a 502 `internal`; nothing reaches the upstream, no connection is dialled;
    the value is neither in the answer nor in the log (the exception message carries it)."""
    method, host, path, body = FAULTS[fault]
    path = f"{path}-{client}"
    target = f"{host}:{up.port}"
    up.requests_seen.clear()
    before = up.connection_count
    status, headers, answer = _faulty_request(srv, token, client, method, target, path, body, tmp_path)
    assert status == 502, answer
    low = {k.lower(): v for k, v in headers.items()}
    assert low["x-agent-vault-proxy-error"] == "true" and low["content-type"] == "application/json"
    data = json.loads(answer)
    assert data["error"] == "internal" and data["incident"], data
    assert SECRET not in answer.decode("latin-1") and SECRET not in str(headers)
    assert up.requests_seen.snapshot() == [] and up.connection_count == before
    incident = data["incident"]
    wait_until(lambda: incident in srv.stderr_text(), f"incident {incident} in the server log", timeout=5)
    log = srv.stderr_text()
    assert SECRET not in log and f"proxy incident {incident}: RuntimeError" in log
    rec = wait_audit(srv.home, path=path)
    assert rec["error"] == "internal" and rec["status"] == 502, rec
    fast = client == "fast" and fast_path_suite() != "off"  # FASTPATH_SUITE=off: httpx meets the engine
    assert rec.get("served_by") == ("fast" if fast else None), rec
    assert SECRET not in json.dumps(rec)


def test_corrupt_credential_is_refused(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    srv.set_credential("CORRUPT_KEY", CORRUPT)
    srv.add_service(
        {
            "name": "corrupt-api",
            "host": "api.upstream.test",
            "port": up.port,
            "auth": {"type": "api-key", "key": "CORRUPT_KEY", "header": "X-Api-Key"},
        }
    )
    db = sqlite3.connect(srv.home / "agent-vault.db")
    with db:
        (ct,) = db.execute("SELECT ciphertext FROM credentials WHERE key='CORRUPT_KEY'").fetchone()
        db.execute(
            "UPDATE credentials SET ciphertext=? WHERE key='CORRUPT_KEY'",
            (bytes(ct[:-1]) + bytes([ct[-1] ^ 1]),),
        )
    db.close()
    srv.set_credential("UNRELATED", "x" * 12)  # any admin change reloads the runtime snapshot
    up.requests_seen.clear()
    body = _err(client.get(f"https://api.upstream.test:{up.port}/echo/c"), 502, "credential_corrupt")
    assert body["key"] == "CORRUPT_KEY"
    assert up.requests_seen.snapshot() == []


def test_upstream_refused_is_json_502(srv: ServerProc, client: httpx.Client) -> None:
    port = free_port()
    srv.add_service(
        {
            "name": "nobody-home",
            "host": "localhost",
            "port": port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
            "allow_http": True,  # the absolute-form http:// attempt below (HTTPS-only by default)
        }
    )
    body = _err(client.get(f"https://localhost:{port}/x"), 502, "upstream_unreachable")
    assert body["cause"] and f"localhost:{port}" in body["message"]
    assert wait_audit(srv.home, port=port)["error"] == "upstream_unreachable"
    with RawConn(srv.proxy_port) as conn:  # absolute-form http: the HTTP/1 path
        r = conn.request(
            "GET",
            f"http://localhost:{port}/x",
            {"Host": f"localhost:{port}", "Proxy-Authorization": basic_token(client)},
        )
    assert r.status == 502 and r.json()["error"] == "upstream_unreachable"
    assert r.headers["x-agent-vault-proxy-error"] == "true"


def test_upstream_refused_is_json_502_over_http2(srv: ServerProc, token: str) -> None:
    port = free_port()
    srv.add_service(
        {
            "name": "nobody-home-h2",
            "host": "localhost",
            "port": port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    cp = subprocess.run(  # curl offers h2 first (httpx through a proxy prefers http/1.1)
        [
            "/usr/bin/curl",
            "-sS",
            "-i",
            "--http2",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(srv.ca_bundle),
            f"https://localhost:{port}/x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    out = cp.stdout  # the CONNECT answer, then the HTTP/2 response inside the tunnel
    assert "\nHTTP/2 502" in out, out + cp.stderr
    assert "x-agent-vault-proxy-error: true" in out and "content-type: application/json" in out
    assert '"upstream_unreachable"' in out


def test_upstream_tls_failure_is_json_502(srv: ServerProc, client: httpx.Client) -> None:
    with TLSUpstream(ca=trustme.CA()) as untrusted:  # signed by a CA the proxy does not trust
        srv.add_service(
            {
                "name": "untrusted-api",
                "host": "localhost",
                "port": untrusted.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        body = _err(client.get(f"https://localhost:{untrusted.port}/echo"), 502, "upstream_tls")
        assert "certificate verify failed" in body["cause"].lower()
        assert untrusted.requests_seen.snapshot() == []


def basic_token(client: httpx.Client) -> str:
    return basic(TOKENS[0])


def test_no_secret_or_token_in_server_log(srv: ServerProc) -> None:
    log = srv.stderr_text()
    for value in (SECRET, CORRUPT, *TOKENS, srv.owner_token, OWNER_PASSWORD):
        assert value not in log
    assert "proxy incident" in log and "RuntimeError" in log  # logged by type, not by message
    assert Path(srv.home / "agent-vault.db").read_bytes().find(SECRET.encode()) == -1
