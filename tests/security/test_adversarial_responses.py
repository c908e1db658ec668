"""The upstream echoes what the proxy injected; proxy headers leak; denied requests dial out
(SPEC §5.7, §5.9, §14.1, §14.6, §14.7).

The upstream reflects request headers, paths and queries into bodies, headers, chunked and gzip
streams, SSE events and WebSocket messages: the agent must only ever see `[REDACTED:KEY]`. Header
hygiene both ways. Every kind of denial leaves a fresh upstream without a single TCP connection.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from helpers.proxy import Resp, basic
from helpers.wsclient import ws_via_proxy
from security.conftest import (
    Forger,
    Sweep,
    SweptServer,
    header_values,
    new_secret,
    owner_patch_vault,
    proxy_error,
    start_server,
    value_forms,
)

V: dict[str, str] = {}
BEARER = {"type": "bearer", "token": "BEARER_KEY"}


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, up: Forger
) -> Iterator[SweptServer]:
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "responses"):
        V.update(
            BEARER_KEY=new_secret(),
            USER_KEY=new_secret("-user"),
            PASS_KEY=new_secret("/+="),
            CUSTOM_KEY=new_secret("/+=&z"),
            QUERY_KEY=new_secret("/+=&q"),
            JSON_KEY=new_secret('/"\\j'),
        )
        for key, value in V.items():
            s.set_credential(key, value)
        sweep.basic_pair("basic-api", V["USER_KEY"], V["PASS_KEY"])

        def svc(name: str, path: str, auth: dict[str, Any]) -> None:
            s.add_service(
                {"name": name, "host": "other.upstream.test", "port": up.port, "path": path, "auth": auth}
            )

        s.add_service({"name": "bearer-api", "host": "api.upstream.test", "port": up.port, "auth": BEARER})
        svc("basic-api", "/echo/basic", {"type": "basic", "username": "USER_KEY", "password": "PASS_KEY"})
        svc(
            "custom-api",
            "/echo/custom",
            {
                "type": "custom",
                "headers": {"X-Custom": "k={{CUSTOM_KEY}}"},
                "query": {"sig": "{{ CUSTOM_KEY }}"},
            },
        )
        svc("query-api", "/echo/query", {"type": "api-key", "key": "QUERY_KEY", "query": "key"})
        svc("json-api", "/forge/jecho", {"type": "api-key", "key": "JSON_KEY", "header": "X-Key"})
        s.add_service(
            {"name": "open-api", "host": "upstream.test", "port": up.port, "auth": {"type": "passthrough"}}
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("echo-bot")


def _clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for key, value in V.items():
        for form in value_forms(value):
            assert form.encode() not in data, f"{key} ({form!r}) reached the agent in {where}"


def _response_text(r: httpx.Response) -> str:
    return "\n".join(f"{k}: {v}" for k, v in r.headers.multi_items()) + "\n" + r.text


# ---- redaction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["", "&chunk=3&delay=0.002", "&gzip=1", "&gzip=1&chunk=5&delay=0.002", "&chunk=1&delay=0"],
    ids=["buffered", "chunked", "gzip", "gzip-chunked", "byte-by-byte"],
)
def test_reflected_bearer_is_redacted_in_body_and_headers(
    srv: SweptServer, up: Forger, token: str, query: str
) -> None:
    with srv.agent_client(token) as c:
        r = c.get(f"https://api.upstream.test:{up.port}/reflect?header=authorization{query}")
    assert r.status_code == 200
    assert (
        r.text == "Bearer [REDACTED:BEARER_KEY]"
        and r.headers["x-reflected"] == "Bearer [REDACTED:BEARER_KEY]"
    )
    _clean(_response_text(r), "a reflected header")


def test_reflected_bearer_is_redacted_in_sse_events(srv: SweptServer, up: Forger, token: str) -> None:
    with (
        srv.agent_client(token) as c,
        c.stream("GET", f"https://api.upstream.test:{up.port}/sse?n=3&delay=0.01&reflect=authorization") as r,
    ):
        body = b"".join(r.iter_bytes())
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert [e["reflected"] for e in events] == ["Bearer [REDACTED:BEARER_KEY]"] * 3
    _clean(body, "an SSE stream")


def test_reflected_basic_credentials_are_redacted_as_base64(srv: SweptServer, up: Forger, token: str) -> None:
    with srv.agent_client(token) as c:
        r = c.get(f"https://other.upstream.test:{up.port}/echo/basic")
    sent = up.requests_seen.wait_for(1)[-1]
    assert header_values(sent, "authorization")[0].startswith("Basic ")
    assert r.json()["headers"]["authorization"].startswith("Basic [REDACTED:")
    _clean(_response_text(r), "an echoed basic header")


def test_reflected_query_credentials_are_redacted_in_their_encoded_form(
    srv: SweptServer, up: Forger, token: str
) -> None:
    """The upstream echoes its raw query string: the percent-encoded value is as readable as the value."""
    with srv.agent_client(token) as c:
        for path in ("/echo/query", "/echo/custom"):
            up.requests_seen.clear()
            r = c.get(f"https://other.upstream.test:{up.port}{path}", params={"x": "1"})
            assert r.status_code == 200
            assert "%2F" in up.requests_seen.wait_for(1)[0]["path"]  # the encoded value was really sent
            _clean(_response_text(r), f"the echoed query of {path}")


def test_substituted_placeholders_are_redacted_when_echoed(srv: SweptServer, up: Forger, token: str) -> None:
    with srv.agent_client(token) as c:
        r = c.get(
            f"https://api.upstream.test:{up.port}/echo/p/%7B%7BBEARER_KEY%7D%7D",
            params={"q": "{{BEARER_KEY}}"},
            headers={"X-Echo": "{{ BEARER_KEY }}"},
        )
    seen = up.requests_seen.wait_for(1)[-1]
    assert header_values(seen, "x-echo") == [V["BEARER_KEY"]]  # substituted on the way out...
    _clean(_response_text(r), "echoed placeholders")  # ...and redacted on the way back
    assert r.json()["headers"]["x-echo"] == "[REDACTED:BEARER_KEY]"


def test_reflected_credentials_are_redacted_in_websocket_messages(
    srv: SweptServer, up: Forger, token: str
) -> None:
    url = f"wss://api.upstream.test:{up.port}/ws"
    with ws_via_proxy(srv.proxy_port, token, url, str(srv.ca_bundle), close_timeout=2) as ws:
        first = ws.recv(timeout=10)
        ws.send("{{BEARER_KEY}} " + "x" * 10)
        echoed = ws.recv(timeout=10)
    srv.sweep.record("websocket messages", f"{first!s}\n{echoed!s}")
    assert json.loads(first)["headers"]["authorization"] == "Bearer [REDACTED:BEARER_KEY]"
    assert echoed == "{{BEARER_KEY}} " + "x" * 10  # websocket substitution is opt-in
    _clean(str(first), "a websocket message")


# ---- header hygiene -------------------------------------------------------------------------------

SPOOF = {
    "X-Vault": "default",
    "X-Agent-Vault-Proxy-Error": "true",
    "x-agent-vault-token": "spoofed",
    "Proxy-Connection": "keep-alive",
    "Connection": "X-Hop",
    "X-Hop": "hop-by-hop",
}


def _no_proxy_headers(req: dict[str, Any], *tokens: str) -> None:
    names = {k.lower() for k, _ in req["headers"]}
    bad = {n for n in names if n.startswith(("x-agent-vault-", "proxy-")) or n in ("x-vault", "x-hop")}
    assert not bad, req["headers"]
    text = json.dumps(req["headers"])
    assert not any(t in text for t in tokens)


@pytest.mark.parametrize(
    "host",
    ["api.upstream.test", "upstream.test", "evil.upstream.test"],
    ids=["injected", "passthrough-service", "unmatched"],
)
def test_proxy_headers_never_reach_the_upstream_nor_come_back(
    srv: SweptServer, up: Forger, evil: Forger, token: str, host: str
) -> None:
    target = evil if host.startswith("evil") else up
    other = srv.make_agent(f"other-{host.split('.')[0]}")  # a second valid token as an inner header
    owner_patch_vault(srv, unmatched_policy="passthrough")
    try:
        target.requests_seen.clear()
        with srv.agent_client(token) as c:
            r = c.get(
                f"https://{host}:{target.port}/echo/hygiene",
                headers={**SPOOF, "Proxy-Authorization": basic(other)},
            )
            forged = c.get(f"https://{host}:{target.port}/forge")
        with srv.raw() as conn:  # absolute-form https: Proxy-Authorization arrives with the request
            raw = conn.request(
                "GET",
                f"https://{host}:{target.port}/echo/hygiene-abs",
                {"Host": f"{host}:{target.port}", "Proxy-Authorization": basic(token), **SPOOF},
            )
    finally:
        owner_patch_vault(srv, unmatched_policy="tunnel")
    assert r.status_code == 200 and raw.status == 200, (r.text, raw.body)
    reqs = target.requests_seen.wait_for(3)
    for req in reqs:
        _no_proxy_headers(req, token, other)
    assert forged.status_code == 200 and forged.json() == {"forged": True}
    assert not [k for k in forged.headers if k.lower().startswith("x-agent-vault-")]
    assert "proxy-authenticate" not in forged.headers


def test_proxy_headers_over_http2(srv: SweptServer, up: Forger, token: str) -> None:
    up.requests_seen.clear()
    # HTTP/2 has no Connection header, so X-Hop is an ordinary header there
    extra = [
        a
        for k, v in SPOOF.items()
        if k.lower() not in ("connection", "proxy-connection", "x-hop")
        for a in ("-H", f"{k}: {v}")
    ]
    cp = srv.curl(token, "--http2", "-i", *extra, f"https://api.upstream.test:{up.port}/forge")
    assert "\nHTTP/2 200" in cp.stdout, cp.stdout + cp.stderr
    head = cp.stdout.split("\r\n\r\n")[-2] if "\r\n\r\n" in cp.stdout else cp.stdout
    assert "x-agent-vault-" not in head.lower().split("http/2 200", 1)[-1]
    (req,) = up.requests_seen.wait_for(1)
    _no_proxy_headers(req, token)


# ---- denials never dial out -----------------------------------------------------------------------


def test_denied_requests_open_no_upstream_connection(
    srv: SweptServer, upstream_ca: trustme.CA, token: str
) -> None:
    with Forger(ca=upstream_ca) as fresh:
        base = {"host": "api.upstream.test", "port": fresh.port}
        srv.add_service({**base, "name": "fresh-get", "path": "/echo/ok", "methods": ["GET"], "auth": BEARER})
        srv.add_service({**base, "name": "fresh-off", "path": "/echo/off", "auth": BEARER, "enabled": False})
        srv.add_service(
            {
                **base,
                "name": "fresh-missing",
                "path": "/echo/missing",
                "auth": {"type": "bearer", "token": "MISSING_KEY"},
            }
        )
        url = f"https://api.upstream.test:{fresh.port}"
        codes: list[str] = []
        engine_codes: list[str] = []
        for bad in (basic("av_agt_" + "A" * 43), basic(token, "no-such-vault"), f"Bearer {srv.owner_token}"):
            with srv.raw() as conn:
                r = conn.connect(f"api.upstream.test:{fresh.port}", {"Proxy-Authorization": bad})
                codes.append(proxy_error(r.status, r.headers, r.body))
            with srv.raw() as conn:
                r = conn.request(
                    "GET",
                    f"{url}/echo/ok",
                    {"Host": f"api.upstream.test:{fresh.port}", "Proxy-Authorization": bad},
                )
                codes.append(proxy_error(r.status, r.headers, r.body))
        owner_patch_vault(srv, unmatched_policy="deny")
        denials: tuple[tuple[str, str, dict[str, str]], ...] = (
            ("POST", "/echo/ok", {}),
            ("GET", "/echo/off", {}),
            ("GET", "/echo/missing", {}),
            ("GET", "/echo/ok/%2e/x", {}),
            ("GET", "/echo/unlisted", {}),
            ("GET", "/echo/ok", {"X-Vault": "other-vault"}),
        )
        try:
            with srv.agent_client(token) as c:  # httpx offers ALPN http/1.1: the fast path
                for method, path, headers in denials:
                    answer = c.request(method, f"{url}{path}", headers=headers)
                    codes.append(proxy_error(answer.status_code, dict(answer.headers), answer.content))
            for method, path, headers in denials:  # no ALPN: the engine's HTTP/1, each on a new connection
                with srv.raw() as conn:
                    conn.connect(f"api.upstream.test:{fresh.port}", {"Proxy-Authorization": basic(token)})
                    assert conn.start_tls("api.upstream.test", srv.ca_bundle).selected_alpn_protocol() is None
                    r = conn.request(method, path, {"Host": f"api.upstream.test:{fresh.port}", **headers})
                    engine_codes.append(proxy_error(r.status, r.headers, r.body))
            with srv.raw() as conn:  # a 1 TiB upload announced: refused before a byte is read
                conn.connect(f"api.upstream.test:{fresh.port}", {"Proxy-Authorization": basic(token)})
                conn.start_tls("api.upstream.test", srv.ca_bundle)
                r = conn.request(
                    "PUT",
                    "/echo/ok",
                    {"Host": f"api.upstream.test:{fresh.port}", "Content-Length": str(1 << 40)},
                )
                codes.append(proxy_error(r.status, r.headers, r.body))
        finally:
            owner_patch_vault(srv, unmatched_policy="tunnel")
        assert codes[:6] == ["proxy_auth_required"] * 2 + ["vault_forbidden"] * 4, codes
        assert codes[6:11] == [
            "method_not_allowed",
            "service_disabled",
            "credential_not_found",
            "invalid_path",
            "service_not_allowed",
        ], codes
        assert codes[11:] == ["vault_forbidden", "body_too_large"], codes
        assert engine_codes == codes[6:12], engine_codes  # the same refusals on the engine
        assert fresh.connection_count == 0 and fresh.requests_seen.snapshot() == []
        with srv.agent_client(token) as c:  # the same host is reachable: the zero above means something
            assert c.get(f"{url}/echo/ok").status_code == 200
        assert fresh.connection_count == 1


# ---- echoes outside header values and plain bodies --------------------------------------------------

PATHS = pytest.mark.parametrize("alpn", [["http/1.1"], None], ids=["fast", "engine"])


def _raw_get(srv: SweptServer, token: str, target: str, alpn: list[str] | None, *paths: str) -> list[Resp]:
    """GETs on one CONNECT tunnel; ALPN `http/1.1` is served by the fast path, no ALPN by the engine."""
    host = target.rpartition(":")[0]
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls(host, srv.ca_bundle, alpn)
        return [conn.request("GET", p, {"Host": target}) for p in paths]


@PATHS
def test_echoes_in_the_reason_phrase_and_header_names_are_removed(
    srv: SweptServer, up: Forger, token: str, alpn: list[str] | None
) -> None:
    """A name cannot carry the marker: a field whose name holds the value is dropped; a reason phrase
    holding it becomes the status code's standard phrase."""
    reason, name = _raw_get(srv, token, f"api.upstream.test:{up.port}", alpn, "/forge/reason", "/forge/name")
    assert (reason.status, reason.reason, reason.body) == (200, "OK", b"ok")
    assert name.status == 200 and name.body == b"ok"
    assert [k.lower() for k, _ in name.header_list if "sk-sec-" in k.lower()] == []
    for r in (reason, name):
        head = f"{r.reason}\n" + "\n".join(f"{k}: {v}" for k, v in r.header_list)
        _clean(head, "a reason phrase or header name")


def test_echoed_header_names_are_removed_over_http2(srv: SweptServer, up: Forger, token: str) -> None:
    with srv.agent_client(token, http2=True) as c:
        r = c.get(f"https://api.upstream.test:{up.port}/forge/name")
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    _clean(_response_text(r), "an HTTP/2 header name")


@PATHS
def test_a_value_echoed_among_thousands_of_headers_is_redacted_in_linear_time(
    srv: SweptServer, up: Forger, token: str, alpn: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile upstream's 7,500 fields (under the 64 KiB head limit) plus one echoing the value: the
    redaction rewrites the fields once (it used to rewrite them per name: ~20 s of a stalled event loop)."""
    monkeypatch.setattr(http.client, "_MAXHEADERS", 10_000)  # the test's own client reads them all
    started = time.monotonic()
    (r,) = _raw_get(srv, token, f"api.upstream.test:{up.port}", alpn, "/forge/many?n=7500")
    took = time.monotonic() - started
    assert r.status == 200 and r.headers["x-echo"] == "Bearer [REDACTED:BEARER_KEY]"
    assert len(r.header_list) > 7500
    assert took < 5, f"{took:.1f} s for one response"


@PATHS
def test_a_value_echoed_in_json_escaped_form_is_redacted(
    srv: SweptServer, up: Forger, token: str, alpn: list[str] | None
) -> None:
    """A value with `/`, `"` and `\\` echoed by a JSON encoder that escapes them (`\\/` as PHP writes it)."""
    (r,) = _raw_get(srv, token, f"other.upstream.test:{up.port}", alpn, "/forge/jecho")
    assert r.status == 200
    assert r.json()["x-key"] == "[REDACTED:JSON_KEY]"
    escaped = json.dumps(V["JSON_KEY"])[1:-1]
    for form in (escaped, escaped.replace("/", "\\/")):
        assert form.encode() not in r.body
    _clean(r.body, "a JSON echo")
