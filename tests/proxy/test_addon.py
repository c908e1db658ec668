"""VaultAddon unit tests with mitmproxy's taddons/tflow: no sockets, a hand-built runtime snapshot.

The e2e suites (tests/e2e/test_proxy_*.py) prove the behaviour over real sockets; these pin the
hook logic that is hard to provoke from outside: unexpected exceptions, expiry, address pinning.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import connection, http
from mitmproxy.proxy import context, layer, layers, server_hooks
from mitmproxy.proxy.layers import http as mhttp
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from agent_vault.config import Settings
from agent_vault.core import Services
from agent_vault.domain.principal import Principal
from agent_vault.matching import ServiceIndex
from agent_vault.metrics import Metrics
from agent_vault.models import utcnow
from agent_vault.proxy import addon as addon_mod
from agent_vault.proxy import answers, engine, request_phase
from agent_vault.proxy.addon import VaultAddon
from agent_vault.proxy.auth import token_digest
from agent_vault.runtime import Runtime
from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import Snapshot, VaultView

SECRET = "unit-secret-value-123456"
AGENT = "av_agt_" + "a" * 43
EXPIRED = "av_sess_" + "e" * 43
HOST = "api.example.com"


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def submit(self, record: dict[str, Any]) -> bool:
        self.records.append(dict(record))
        return True


def make_addon(tmp_path: Path, policy: str = "tunnel", **settings: Any) -> tuple[VaultAddon, FakeAudit]:
    svc = ServiceDef.model_validate(
        {"name": "example", "host": HOST, "port": 443, "auth": {"type": "bearer", "token": "API_TOKEN"}}
    )
    view = VaultView(1, "default", policy, "enforce", ServiceIndex([svc]), (svc,), {"API_TOKEN": SECRET})
    principals = {
        token_digest(AGENT): Principal("agent", 1, "unit-bot", agent_id=1, grants={"default": "proxy"}),
        token_digest(EXPIRED): Principal(
            "session",
            2,
            "agent:unit-bot",
            session_vault="default",
            expires_at=utcnow() - timedelta(seconds=1),
        ),
    }
    runtime = Runtime(None, b"")  # type: ignore[arg-type]  # the store is only used by reload()
    runtime.snapshot = Snapshot(principals, {"default": view})
    audit = FakeAudit()
    core = SimpleNamespace(
        settings=Settings(home=tmp_path, allow_net=("127.0.0.0/8",), rate_limits="off", **settings),
        services=Services(
            resolve={
                HOST: "127.0.0.1",
                "other.example.com": "127.0.0.1",
                "meta.example.com": "169.254.169.254",
            }
        ),
        runtime=runtime,
        audit=audit,
        public_url="http://127.0.0.1:14321",
        api_url="http://127.0.0.1:14321",
    )
    return VaultAddon(core, Metrics()), audit  # type: ignore[arg-type]


def basic(token: str, vault: str = "default") -> str:
    import base64

    return "Basic " + base64.b64encode(f"{token}:{vault}".encode()).decode()


def absolute_flow(path: str = "/v1/x", host: str = HOST, auth: str | None = None) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.scheme, f.request.host, f.request.port, f.request.path = "https", host, 443, path
    f.request.headers["Proxy-Authorization"] = auth or basic(AGENT)
    f.request.headers["Authorization"] = "Bearer agent-fake"
    return f


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())


def error_of(f: http.HTTPFlow) -> dict[str, Any]:
    assert f.response is not None
    assert f.response.headers["X-Agent-Vault-Proxy-Error"] == "true"
    assert f.response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(f.response.content or b"")
    return body


def test_injects_and_strips_proxy_headers(tmp_path: Path) -> None:
    a, audit = make_addon(tmp_path)
    f = absolute_flow()
    f.request.headers["X-Vault"] = "default"
    f.request.headers["X-Agent-Vault-Debug"] = "1"

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)

    run(go)
    assert f.response is None
    h = f.request.headers
    assert h.get_all("authorization") == [f"Bearer {SECRET}"]
    assert "proxy-authorization" not in h and "x-vault" not in h and "x-agent-vault-debug" not in h
    assert f.request.host == HOST and f.request.host_header == HOST


def test_unexpected_error_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, audit = make_addon(tmp_path)

    def boom(*args: Any) -> Any:
        raise RuntimeError(f"failure carrying {SECRET}")

    monkeypatch.setattr(request_phase, "decide", boom)
    f = absolute_flow()

    async def go() -> None:
        with taddons.context(a) as tctx:
            await tctx.cycle(a, f)

    with caplog.at_level(logging.ERROR, logger="agent_vault.proxy"):
        run(go)
    body = error_of(f)
    assert f.response is not None and f.response.status_code == 502
    assert body["error"] == "internal" and body["incident"]
    assert f.request.headers.get_all("authorization") == ["Bearer agent-fake"]  # nothing injected
    assert body["incident"] in caplog.text and "RuntimeError" in caplog.text and SECRET not in caplog.text
    (rec,) = audit.records
    assert rec["decision"] == "error" and rec["error"] == "internal" and rec["status"] == 502


def test_expired_session_token_gets_407(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path)
    f = absolute_flow(auth=basic(EXPIRED, ""))

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)

    run(go)
    assert f.response is not None and f.response.status_code == 407
    assert f.response.headers["Proxy-Authenticate"] == 'Basic realm="agent-vault"'
    assert error_of(f)["error"] == "proxy_auth_required"


def test_connect_decides_mitm_or_tunnel_and_tunnels_skip_tls(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path)
    matched, unmatched = tflow.tflow(), tflow.tflow()
    for f, host in ((matched, HOST), (unmatched, "other.example.com")):
        f.request.method, f.request.host, f.request.port = "CONNECT", host, 443
        f.request.headers["Proxy-Authorization"] = basic(AGENT)

    async def go() -> None:
        with taddons.context(a) as tctx:
            for f in (matched, unmatched):
                a.client_connected(f.client_conn)
                await a.http_connect(f)
            for f, expect_tcp in ((matched, False), (unmatched, True)):
                nl = layer.NextLayer(context.Context(f.client_conn, tctx.options))
                a.next_layer(nl)
                assert isinstance(nl.layer, layers.TCPLayer) is expect_tcp

    run(go)
    assert matched.response is None and unmatched.response is None
    assert a.conns[matched.client_conn.id].mode == "mitm"
    assert a.conns[unmatched.client_conn.id].mode == "tunnel"


def test_inner_request_is_decided_by_the_connect_target_not_host(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path, policy="passthrough")
    connect = tflow.tflow()
    connect.request.method, connect.request.host, connect.request.port = "CONNECT", "other.example.com", 443
    connect.request.headers["Proxy-Authorization"] = basic(AGENT)
    inner = tflow.tflow(client_conn=connect.client_conn)
    inner.request.scheme, inner.request.host, inner.request.port = "https", "other.example.com", 443
    inner.request.headers["Host"] = HOST  # names the matched service

    async def go() -> None:
        with taddons.context(a):
            a.client_connected(connect.client_conn)
            await a.http_connect(connect)
            await a.requestheaders(inner)

    run(go)
    assert inner.response is None
    assert inner.request.headers.get_all("authorization") == []
    assert inner.request.host_header == "other.example.com"


def test_revocation_applies_to_the_next_inner_request(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path)
    connect = tflow.tflow()
    connect.request.method, connect.request.host, connect.request.port = "CONNECT", HOST, 443
    connect.request.headers["Proxy-Authorization"] = basic(AGENT)
    inner = tflow.tflow(client_conn=connect.client_conn)
    inner.request.scheme, inner.request.host, inner.request.port = "https", HOST, 443

    async def go() -> None:
        with taddons.context(a):
            a.client_connected(connect.client_conn)
            await a.http_connect(connect)
            snap = a.core.runtime.snapshot
            a.core.runtime.snapshot = Snapshot({}, snap.vaults)  # the token was revoked
            await a.requestheaders(inner)

    run(go)
    assert inner.response is not None and inner.response.status_code == 407


def test_ssrf_blocked_metadata_before_any_connection(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path, policy="passthrough")
    f = absolute_flow(host="meta.example.com")

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)

    run(go)
    body = error_of(f)
    assert body["error"] == "ssrf_blocked" and body["address_class"] == "metadata"
    assert body["message"] == "meta.example.com resolves to 169.254.169.254 (metadata)"


def test_server_connect_pins_checked_address_and_target_sni(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path)
    server = connection.Server(address=(HOST, 443))
    server.sni = "client-chosen.example.net"
    data = server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn())

    async def go() -> None:
        with taddons.context(a):
            await a.server_connect(data)

    run(go)
    assert server.address == ("127.0.0.1", 443) and server.sni == HOST and server.error is None
    server.state = connection.ConnectionState.OPEN
    a.server_connected(data)
    assert server.address == (HOST, 443)  # reuse stays keyed by the verified name
    blocked = connection.Server(address=("meta.example.com", 80))
    bdata = server_hooks.ServerConnectionHookData(server=blocked, client=tflow.tclient_conn())

    async def go2() -> None:
        with taddons.context(a):
            await a.server_connect(bdata)

    run(go2)
    assert blocked.error and "ssrf_blocked" in blocked.error


def test_response_redaction_decodes_gzip_and_scrubs_the_flow(tmp_path: Path) -> None:
    a, audit = make_addon(tmp_path)
    f = absolute_flow()
    body = gzip.compress(f"you sent Bearer {SECRET}".encode())
    f.response = http.Response.make(
        200,
        b"",
        {
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
            "X-Echo": f"Bearer {SECRET}",
            "Set-Cookie": "s=1",
            "X-Agent-Vault-Proxy-Error": "true",
        },
    )
    f.response.raw_content = body  # as received: gzip on the wire

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)
            a.responseheaders(f)
            a.response(f)

    run(go)
    assert f.response is not None
    assert f.response.content == b"you sent Bearer [REDACTED:API_TOKEN]"
    assert "content-encoding" not in f.response.headers
    assert f.response.headers["X-Echo"] == "Bearer [REDACTED:API_TOKEN]"
    assert "set-cookie" not in f.response.headers and "x-agent-vault-proxy-error" not in f.response.headers
    assert f.request.headers["authorization"] == "[scrubbed]"  # the value does not linger on the flow
    (rec,) = audit.records
    assert rec["decision"] == "injected" and rec["redacted_keys"] == ["API_TOKEN"]
    assert SECRET not in json.dumps(audit.records)


def test_unknown_encoding_is_forwarded_unscanned_and_audited(tmp_path: Path) -> None:
    a, audit = make_addon(tmp_path)
    f = absolute_flow()
    f.response = http.Response.make(200)
    f.response.raw_content = b"\x00\x01abc"
    f.response.headers["Content-Encoding"] = "x-custom"
    f.response.headers["Content-Length"] = "5"

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)
            a.responseheaders(f)
            a.response(f)

    run(go)
    assert f.response is not None and f.response.raw_content == b"\x00\x01abc"
    assert f.response.headers["Content-Encoding"] == "x-custom"  # forwarded as received
    assert audit.records[-1]["redaction"] == "skipped"


def test_response_hook_failure_replaces_the_response(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = make_addon(tmp_path)
    f = absolute_flow()
    f.response = http.Response.make(200, f"Bearer {SECRET}".encode(), {"Content-Length": "30"})

    def boom(*_: Any) -> None:
        raise ValueError("nope")

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)
            monkeypatch.setattr(addon_mod.FlowState, "redact_buffered", boom)
            a.response(f)

    run(go)
    assert error_of(f)["error"] == "internal"
    assert f.response is not None and SECRET.encode() not in (f.response.content or b"")


def test_websocket_messages_are_substituted_and_redacted(tmp_path: Path) -> None:
    a, _ = make_addon(tmp_path)
    f = tflow.twebsocketflow()
    f.request.scheme, f.request.host, f.request.port = "https", HOST, 443
    f.request.headers["Proxy-Authorization"] = basic(AGENT)

    async def go() -> None:
        with taddons.context(a):
            await a.requestheaders(f)
            a.response(f)  # the 101 with flow.websocket set
            assert f.websocket is not None
            f.websocket.messages.append(WebSocketMessage(Opcode.TEXT, False, f"x{SECRET}y".encode()))
            a.websocket_message(f)

    run(go)
    assert f.websocket is not None and f.websocket.messages[-1].content == b"x[REDACTED:API_TOKEN]y"


# ---- engine -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Certificate verify failed: unable to get local issuer certificate", "upstream_tls"),
        ("[Errno 111] Connect call failed ('127.0.0.1', 9)", "upstream_unreachable"),
        ("Connection killed: refused by the proxy (ssrf_blocked)", "upstream_unreachable"),
        ("TimeoutError: timed out", "upstream_timeout"),
        ("[Errno -2] Name or service not known", "upstream_dns"),
    ],
)
def test_upstream_error_classification(message: str, code: str) -> None:
    err = answers.upstream_error(message, "h:1")
    assert err.code == code and err.extra["cause"]


def test_h1_error_page_is_spec_json() -> None:
    raw = answers.h1_error_response(400, "HTTP request has no host header, destination unknown.")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"X-Agent-Vault-Proxy-Error: true" in head
    assert json.loads(body)["error"] == "bad_request"
    raw = answers.h1_error_response(502, "Certificate verify failed: self-signed certificate")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "upstream_tls"


def test_engine_install_is_reversible() -> None:
    original = mhttp.HttpStream
    engine.install()
    engine.install()
    assert mhttp.HttpStream is engine.VaultHttpStream
    engine.uninstall()
    assert mhttp.HttpStream is original
