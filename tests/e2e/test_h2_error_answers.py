"""SPEC §6 answers to HTTP/2 clients for errors the engine raises itself while a request body is still
on its way: an upload of unknown length crossing --max-request-bytes (413), an upstream that cannot be
reached (502) and an upstream that answers garbage mid-upload (502). mitmproxy's HTTP/2 layer answers
these with an HTML page carrying the engine's raw message (which can hold upstream bytes, e.g. an
injected credential echoed in a bad status line); the proxy must send its JSON error instead, with
fixed-phrase causes. Real server subprocess, real HTTP/2 client (httpx, http2=True).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme
from helpers.proxy import free_port, wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

SECRET = "h2-errors-secret-value-8181"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("h2-errors")
    with ServerProc(
        tmp, upstream_ca, extra_args=("--rate-limits", "off", "--max-request-bytes", "1000")
    ) as s:
        s.set_credential("H2E_TOKEN", SECRET)
        s.add_service(
            {
                "name": "h2e-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "H2E_TOKEN"},
            }
        )
        yield s


class GarbageUpstream:
    """HTTPS upstream (HTTP/1.1 only) that answers every request head with an unparsable status line
    echoing the Authorization header it got (the injected credential), then hangs up."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(self.ctx)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.ctx.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            self.heads.append(buf.split(b"\r\n\r\n")[0])
            auth = next(
                (
                    ln.split(b":", 1)[1].strip()
                    for ln in buf.split(b"\r\n")
                    if ln.lower().startswith(b"authorization:")
                ),
                b"",
            )
            conn.sendall(b"NOT-HTTP " + auth + b" garbage\r\n\r\n")
            time.sleep(0.5)

    def close(self) -> None:
        self.sock.close()


def _client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=30, http2=True
    )


def _slow_body(pieces: int, size: int = 300, delay: float = 0.05) -> Iterator[bytes]:
    """A body without a length (HTTP/2 DATA frames only), sent over a while."""
    for _ in range(pieces):
        yield b"u" * size
        time.sleep(delay)


def _json_error(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.http_version == "HTTP/2", r.http_version
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.text
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    assert "<html" not in r.text.lower()
    body = r.json()
    assert body["error"] == code and body["message"] and "hint" in body, body
    return dict(body)


def test_h2_upload_without_length_over_the_limit_is_json_413(srv: ServerProc, up: TLSUpstream) -> None:
    token = srv.make_agent("h2-big-bot")
    with _client(srv, token) as c:
        r = c.post(f"https://localhost:{up.port}/echo/h2-cut", content=_slow_body(10))
    body = _json_error(r, 413, "body_too_large")
    assert body["limit_bytes"] == 1000
    assert "mitmproxy" not in r.text.lower()
    rec = wait_audit(srv.home, path="/echo/h2-cut")
    assert rec["error"] == "body_too_large" and rec["status"] == 413


def test_h2_upload_to_an_unreachable_upstream_is_json_502(srv: ServerProc) -> None:
    port = free_port()
    srv.add_service(
        {
            "name": "h2e-nobody",
            "host": "localhost",
            "port": port,
            "auth": {"type": "bearer", "token": "H2E_TOKEN"},
        }
    )
    token = srv.make_agent("h2-nobody-bot")
    with _client(srv, token) as c:
        r = c.post(f"https://localhost:{port}/x", content=_slow_body(2))
    body = _json_error(r, 502, "upstream_unreachable")
    assert body["cause"] and body["message"] == f"cannot reach localhost:{port}", body
    assert "connect call failed" not in r.text.lower() and "127.0.0.1" not in r.text


def test_h2_upload_to_an_untrusted_upstream_is_json_502(srv: ServerProc) -> None:
    with TLSUpstream(ca=trustme.CA()) as untrusted:  # a certificate the proxy does not trust
        srv.add_service(
            {
                "name": "h2e-untrusted",
                "host": "localhost",
                "port": untrusted.port,
                "auth": {"type": "bearer", "token": "H2E_TOKEN"},
            }
        )
        token = srv.make_agent("h2-untrusted-bot")
        with _client(srv, token) as c:
            r = c.post(f"https://localhost:{untrusted.port}/echo", content=_slow_body(2))
        body = _json_error(r, 502, "upstream_tls")
        assert "certificate verify failed" in str(body["cause"]).lower()
        assert untrusted.requests_seen.snapshot() == []


def test_h2_garbage_answer_mid_upload_is_json_502_without_upstream_bytes(
    srv: ServerProc, upstream_ca: trustme.CA
) -> None:
    bad = GarbageUpstream(upstream_ca)
    try:
        srv.add_service(
            {
                "name": "h2e-garbage",
                "host": "localhost",
                "port": bad.port,
                "auth": {"type": "bearer", "token": "H2E_TOKEN"},
            }
        )
        token = srv.make_agent("h2-garbage-bot")
        with _client(srv, token) as c:  # the answer comes while the body is still being sent
            r = c.post(f"https://localhost:{bad.port}/echo", content=_slow_body(3, delay=1.0))
        assert bad.heads and SECRET.encode() in bad.heads[0]  # the upstream got (and echoed) the secret
        body = _json_error(r, 502, "upstream_unreachable")
        assert body["cause"] == "malformed response from the upstream", body
        assert SECRET not in r.text and "garbage" not in r.text and "NOT-HTTP" not in r.text
    finally:
        bad.close()
