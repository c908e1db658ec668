"""`ws_via_proxy` ends a handshake that never gets an answer instead of hanging the test."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from helpers.wsclient import GRACE_S, ws_via_proxy


@pytest.fixture
def silent_proxy(upstream_ca: trustme.CA) -> Iterator[int]:
    """Answers CONNECT with 200, completes TLS as api.upstream.test, then never answers the upgrade."""
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca.issue_cert("api.upstream.test").configure_cert(ctx)
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)  # the upgrade request, left unanswered
                done.wait(30)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()[1]
    done.set()
    t.join(5)
    listener.close()


def test_an_unanswered_handshake_fails_in_bounded_time(
    silent_proxy: int, tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    cafile = tmp_path / "ca.pem"
    upstream_ca.cert_pem.write_to_path(str(cafile))
    start = time.monotonic()
    with pytest.raises(AssertionError, match="WebSocket open through the proxy"):
        ws_via_proxy(silent_proxy, "tok", "wss://api.upstream.test:443/ws", str(cafile), open_timeout=1)
    assert time.monotonic() - start < 1 + GRACE_S + 5
