"""A WebSocket client through the proxy whose opening handshake cannot hang the test.

websockets' sync client, when its handshake fails (e.g. times out under load), closes the socket and
joins its reader thread; `close()` does not wake a thread blocked in an SSL read, so the join can
wait forever (seen in CI: 120 s, then pytest-timeout). Here the CONNECT is ours and we keep a
duplicate of the socket: if the open has not finished `open_timeout + GRACE_S` seconds after it
started, the duplicate is shut down, which does wake the reader, and the test fails with a clear
error instead of a timeout with a thread dump.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from helpers.proxy import RawConn, basic

GRACE_S = 5.0


def ws_via_proxy(
    proxy_port: int, token: str, url: str, cafile: str, open_timeout: float = 30, **kw: Any
) -> ClientConnection:
    """Open the WebSocket `url` (wss://host:port/...) through the proxy as `token` (vault default)."""
    parts = urlsplit(url)
    target = f"{parts.hostname}:{parts.port}"
    raw = RawConn(proxy_port, timeout=open_timeout)
    answer = raw.connect(target, {"Proxy-Authorization": basic(token)})
    if answer.status != 200:
        raw.close()
        raise AssertionError(f"CONNECT {target} answered {answer.status}: {answer.body[:200]!r}")
    raw.f.close()  # nothing past the CONNECT answer was read: the server waits for our ClientHello
    raw.sock.settimeout(None)
    spare = raw.sock.dup()
    stuck = threading.Event()

    def unstick() -> None:
        stuck.set()
        with contextlib.suppress(OSError):
            spare.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(open_timeout + GRACE_S, unstick)
    timer.start()
    try:
        conn: ClientConnection = ws_connect(
            url, sock=raw.sock, ssl=ssl.create_default_context(cafile=cafile), open_timeout=open_timeout, **kw
        )
    except Exception as e:
        how = "hung and was shut down" if stuck.is_set() else "failed"
        raise AssertionError(f"WebSocket open through the proxy {how}: {e!r}") from e
    finally:
        timer.cancel()
        spare.close()
    return conn
