"""The HTTP/1.1 fast path (issue #24) end to end: the real server with `--fast-path on`, a real HTTPS
upstream, real clients. Every guarantee of the engine path is checked on the lean loop: injection,
redaction (buffered and streamed), SSE, large downloads, keep-alive, per-request revocation and
rotation, `Connection: close`, the audit record (`served_by: fast`) and the per-path metric; and
what stays on the engine (HTTP/2 clients, clients without ALPN, WebSockets refused per request).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.env import base_env
from helpers.proxy import RawConn, audit_records, basic, wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream, download_payload

SECRET = "fast-path-secret-value-4242"
ROTATED = "fast-path-rotated-value-5353"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(
        tmp_path_factory.mktemp("fast"), upstream_ca, extra_args=("--fast-path", "on", "--rate-limits", "off")
    ) as s:
        s.set_credential("FAST_TOKEN", SECRET)
        s.add_service(
            {
                "name": "fast-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "FAST_TOKEN"},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    return srv.make_agent("fast-bot")


def _client(srv: ServerProc, token: str, **kw: object) -> httpx.Client:
    return httpx.Client(
        proxy=srv.proxy_url(token),
        verify=str(srv.ca_bundle),
        trust_env=False,
        timeout=30,
        limits=httpx.Limits(max_connections=1),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(srv: ServerProc, token: str) -> Iterator[httpx.Client]:
    with _client(srv, token) as c:
        yield c


def _path_count(srv: ServerProc, path: str) -> float:
    with srv.http() as c:
        text = c.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(f'agent_vault_proxy_path_requests_total{{path="{path}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_injection_audit_and_metrics(srv: ServerProc, client: httpx.Client, up: TLSUpstream) -> None:
    before = _path_count(srv, "fast")
    r = client.get(f"https://localhost:{up.port}/echo/inj?q=1", headers={"Authorization": "Bearer agent-own"})
    assert r.status_code == 200
    seen = r.json()["headers"]
    assert seen["authorization"] == "Bearer [REDACTED:FAST_TOKEN]"  # injected, then redacted in the echo
    assert "proxy-authorization" not in seen
    rec = wait_audit(srv.home, path="/echo/inj")
    assert rec["decision"] == "injected" and rec["injected_keys"] == ["FAST_TOKEN"]
    assert rec["served_by"] == "fast" and rec["status"] == 200
    assert SECRET not in json.dumps(rec)
    assert _path_count(srv, "fast") >= before + 1


def test_redaction_of_headers_and_body(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/reflect?header=authorization")
    assert r.headers["x-reflected"] == "Bearer [REDACTED:FAST_TOKEN]"
    assert r.text == "Bearer [REDACTED:FAST_TOKEN]"
    r = client.get(f"https://localhost:{up.port}/reflect?header=authorization&gzip=1&chunk=5")
    assert r.text == "Bearer [REDACTED:FAST_TOKEN]"  # streamed, decoded, redacted across chunks


def test_sse_is_streamed_and_redacted(client: httpx.Client, up: TLSUpstream) -> None:
    t0 = time.monotonic()
    got: list[tuple[float, str]] = []
    url = f"https://localhost:{up.port}/sse?n=3&delay=0.5&reflect=authorization"
    with client.stream("GET", url) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                got.append((time.monotonic() - t0, line))
    assert len(got) == 3 and got[0][0] < 0.4 and got[-1][0] >= 0.9
    assert all(json.loads(line[5:])["reflected"] == "Bearer [REDACTED:FAST_TOKEN]" for _, line in got)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ten_mib_download(client: httpx.Client, up: TLSUpstream, chunked: bool) -> None:
    n = 10 * 1024 * 1024
    digest, size = hashlib.sha256(), 0
    with client.stream("GET", f"https://localhost:{up.port}/download?bytes={n}&chunked={int(chunked)}") as r:
        assert r.status_code == 200
        for part in r.iter_bytes():
            digest.update(part)
            size += len(part)
    assert size == n
    assert digest.hexdigest() == hashlib.sha256(download_payload(n)).hexdigest()


def test_uploads_buffered_and_streamed(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.post(f"https://localhost:{up.port}/echo/up", content=b"x" * 1000)
    assert r.json()["body_length"] == 1000
    big = b"y" * (3 << 20)  # over the 1 MiB threshold: streamed
    r = client.post(f"https://localhost:{up.port}/echo/up", content=big)
    assert r.json()["body_length"] == len(big)
    r = client.post(f"https://localhost:{up.port}/echo/up", content=iter([b"a" * 70000] * 5))  # chunked
    assert r.json()["body_length"] == 350000


def test_keep_alive_1000_requests_one_connection(
    srv: ServerProc, client: httpx.Client, up: TLSUpstream
) -> None:
    before = _path_count(srv, "fast")
    for i in range(1000):
        r = client.get(f"https://localhost:{up.port}/echo/ka?i={i}")
        assert r.status_code == 200, (i, r.text)
    assert _path_count(srv, "fast") >= before + 1000
    # one CONNECT for all of them: one audit record per request, all fast
    recs = audit_records(srv.home, path="/echo/ka")
    assert len(recs) >= 1 and all(x.get("served_by") == "fast" for x in recs)


def test_revocation_mid_connection(srv: ServerProc, up: TLSUpstream) -> None:
    t = srv.make_agent("fast-revoked")
    with _client(srv, t) as c:
        assert c.get(f"https://localhost:{up.port}/echo/rv").status_code == 200
        with srv.http() as api:
            api.post("/v1/agents/fast-revoked/revoke").raise_for_status()
        r = c.get(f"https://localhost:{up.port}/echo/rv")  # the same connection: re-checked per request
        assert r.status_code == 407
        assert r.headers["x-agent-vault-proxy-error"] == "true"
        assert r.json()["error"] == "proxy_auth_required"


def test_rotation_mid_connection(srv: ServerProc, client: httpx.Client, up: TLSUpstream) -> None:
    url = f"https://localhost:{up.port}/reflect?header=authorization"
    assert client.get(url).text == "Bearer [REDACTED:FAST_TOKEN]"
    srv.set_credential("FAST_TOKEN", ROTATED)
    try:
        r = client.get(f"https://localhost:{up.port}/echo/rot")  # the same connection, the new value
        assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:FAST_TOKEN]"
        assert ROTATED not in r.text and SECRET not in r.text
        wait_audit(srv.home, path="/echo/rot", served_by="fast")
    finally:
        srv.set_credential("FAST_TOKEN", SECRET)


def test_connection_close_and_refusal(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("localhost", srv.ca_bundle, alpn=["http/1.1"])
        r = conn.request("GET", "/echo/c1", {"Host": f"localhost:{up.port}"})
        assert r.status == 200 and r.json()["headers"]["authorization"] == "Bearer [REDACTED:FAST_TOKEN]"
        r = conn.request("GET", "/echo/c2", {"Host": f"localhost:{up.port}", "Connection": "close"})
        assert r.status == 200 and r.headers.get("connection") == "close"
        assert conn.f.read() == b""  # the proxy closed the connection
    assert wait_audit(srv.home, path="/echo/c2")["served_by"] == "fast"


def test_smuggling_refused(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("localhost", srv.ca_bundle, alpn=["http/1.1"])
        conn.send(
            b"POST /echo/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status = conn.f.readline()
        assert status.startswith(b"HTTP/1.1 400")
    assert not audit_records(srv.home, path="/echo/smuggled")


def test_websocket_upgrade_refused_per_request(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("localhost", srv.ca_bundle, alpn=["http/1.1"])
        r = conn.request(
            "GET",
            "/ws",
            {
                "Host": f"localhost:{up.port}",
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert r.status == 400 and r.json()["error"] == "bad_request"


def test_http2_and_no_alpn_clients_stay_on_the_engine(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    with _client(srv, token, http2=True) as c:
        r = c.get(f"https://localhost:{up.port}/echo/h2")
        assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert "served_by" not in wait_audit(srv.home, path="/echo/h2")
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("localhost", srv.ca_bundle)  # no ALPN at all (WebSocket libraries)
        assert conn.request("GET", "/echo/noalpn", {"Host": f"localhost:{up.port}"}).status == 200
    assert "served_by" not in wait_audit(srv.home, path="/echo/noalpn")


def test_fast_path_flag_is_validated(tmp_path: Path) -> None:
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "h"))
    p = subprocess.run(
        [sys.executable, "-m", "agent_vault", "server", "--fast-path", "maybe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "fast_path" in p.stderr and "on or off" in p.stderr
    assert "Traceback" not in p.stderr


def test_client_hanging_up_mid_request_is_audited(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(token)}).status == 200
        conn.start_tls("localhost", srv.ca_bundle, alpn=["http/1.1"])
        conn.send(f"GET /delay?seconds=3 HTTP/1.1\r\nHost: localhost:{up.port}\r\n\r\n".encode())
        time.sleep(0.5)
    rec = wait_audit(srv.home, path="/delay")
    assert rec["served_by"] == "fast" and rec["error"] == "client_disconnected"


class _HangsUpOnSecondRequest:
    """A TLS upstream whose FIRST connection answers one request, then reads the next one and closes
    without a byte of answer (the keep-alive race); later connections answer every request."""

    def __init__(self, ca: trustme.CA) -> None:
        import socket
        import ssl
        import threading

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(self.ctx)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.seen: list[str] = []  # request lines, in the order they arrived
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(raw, self.connections), daemon=True).start()

    def _conn(self, raw: object, n: int) -> None:
        import ssl

        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:  # type: ignore[arg-type]
                f = s.makefile("rb")
                for i in range(50):
                    line = f.readline()
                    if not line:
                        return
                    length = 0
                    while (h := f.readline()) not in (b"\r\n", b""):
                        if h.lower().startswith(b"content-length:"):
                            length = int(h.split(b":")[1])
                    f.read(length)
                    self.seen.append(line.decode().strip())
                    if n == 1 and i == 1:
                        return  # hang up without answering
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("PUT", True), ("POST", False)])
def test_only_idempotent_requests_are_sent_again_after_an_idle_hang_up(
    srv: ServerProc, token: str, upstream_ca: trustme.CA, method: str, retried: bool
) -> None:
    """RFC 9110 §9.2.2: the upstream may have processed a POST it hung up on; only GET/PUT/... go twice."""
    up = _HangsUpOnSecondRequest(upstream_ca)
    try:
        name = f"hangup-{method.lower()}"
        srv.add_service(
            {
                "name": name,
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "FAST_TOKEN"},
            }
        )
        with _client(srv, token) as c:
            assert c.get(f"https://localhost:{up.port}/first").status_code == 200
            r = c.request(method, f"https://localhost:{up.port}/second", content=b"x")
        sent = [s for s in up.seen if "/second" in s]
        if retried:
            assert r.status_code == 200 and r.text == "ok" and len(sent) == 2 and up.connections == 2
        else:
            assert r.status_code == 502 and len(sent) == 1, (r.status_code, up.seen)
    finally:
        up.close()
