"""A WebSocket client through the proxy whose opening handshake cannot hang the test.

Two hazards of websockets' sync client, both seen in CI, are kept out here:

- It reads on a background thread while its caller writes (the upgrade request, then messages). On a
  TLS socket that means `SSL_read` and `SSL_write` on one OpenSSL object from two threads at once,
  which OpenSSL does not allow (TLS 1.3 session tickets arrive right after the handshake, so the reader
  is busy in the SSL object exactly as the upgrade is written). Here websockets talks plaintext over a
  socket pair, and one relay thread does all the TLS (`ssl.SSLObject` on memory BIOs) to the proxy.
- When its handshake fails (e.g. times out under load) it closes the socket and joins its reader
  thread; `close()` does not wake a thread blocked in a read, so the join can wait forever (CI: 120 s,
  then pytest-timeout). We keep a duplicate of websockets' socket: if the open has not finished
  `open_timeout + GRACE_S` seconds after it started, the duplicate is shut down, which wakes the reader,
  and the test fails with a clear error instead.

The CONNECT is ours too (`helpers.proxy.RawConn`), so the proxy sees the same CONNECT, ClientHello
and upgrade request as from any client.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from helpers.proxy import RawConn, basic

GRACE_S = 5.0
READ = 65536


class TlsRelay:
    """TLS to the proxy on one thread; `inner` is the plaintext end for the WebSocket client.

    The handshake runs in the constructor (bounded by `timeout`); afterwards one daemon thread moves
    bytes both ways, half-closes follow the peer's, and it ends when both directions have ended.
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, hostname: str, timeout: float) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)
        self.inner, self._outer = socket.socketpair()
        try:
            self._handshake(timeout)
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._run, name="ws-tls-relay", daemon=True)
        self.thread.start()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _handshake(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(READ)
                if not data:
                    raise ConnectionError("the proxy closed the connection during the TLS handshake")
                self.incoming.write(data)
        self._flush()
        self.sock.settimeout(None)

    def _from_proxy(self) -> bool:
        """Decrypt what the proxy sent for the client; False once the proxy's side has ended."""
        data = self.sock.recv(READ)
        if not data:
            return False
        self.incoming.write(data)
        while True:
            try:
                plain = self.tls.read(READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                return False
            self._outer.sendall(plain)
        self._flush()  # anything the records asked for (e.g. a key update)
        return True

    def _to_proxy(self) -> bool:
        """Encrypt what the client wrote; False once the client has half-closed."""
        data = self._outer.recv(READ)
        if not data:
            return False
        self.tls.write(data)
        self._flush()
        return True

    def _run(self) -> None:
        proxy_open = client_open = True
        try:
            while proxy_open or client_open:
                watch = ([self.sock] if proxy_open else []) + ([self._outer] if client_open else [])
                ready, _, _ = select.select(watch, [], [])
                if self.sock in ready and not self._from_proxy():
                    proxy_open = False
                    with contextlib.suppress(OSError):
                        self._outer.shutdown(socket.SHUT_WR)  # the client reads the end of the stream
                if self._outer in ready and not self._to_proxy():
                    client_open = False
                    with contextlib.suppress(OSError):
                        self.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError, ssl.SSLError):  # ValueError: select on a socket closed under it
            pass  # the test sees the broken connection on its side
        finally:
            self.close()

    def close(self) -> None:
        for s in (self._outer, self.sock):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def ws_via_proxy(
    proxy_port: int, token: str, url: str, cafile: str, open_timeout: float = 30, **kw: Any
) -> ClientConnection:
    """Open the WebSocket `url` (wss://host:port/...) through the proxy as `token` (vault default)."""
    parts = urlsplit(url)
    assert parts.scheme == "wss" and parts.hostname, url
    target = f"{parts.hostname}:{parts.port or 443}"
    raw = RawConn(proxy_port, timeout=open_timeout)
    answer = raw.connect(target, {"Proxy-Authorization": basic(token)})
    if answer.status != 200:
        raw.close()
        raise AssertionError(f"CONNECT {target} answered {answer.status}: {answer.body[:200]!r}")
    raw.f.close()  # nothing past the CONNECT answer was read: the server waits for our ClientHello
    try:
        relay = TlsRelay(raw.sock, ssl.create_default_context(cafile=cafile), parts.hostname, open_timeout)
    except (OSError, ssl.SSLError) as e:
        raise AssertionError(f"TLS to the proxy for {target} failed: {e!r}") from e
    spare = relay.inner.dup()
    stuck = threading.Event()

    def unstick() -> None:
        stuck.set()
        with contextlib.suppress(OSError):
            spare.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(open_timeout + GRACE_S, unstick)
    timer.start()
    # websockets sends the same request line and Host for ws://h:p as for wss://h:p (p other than 443)
    plain = urlunsplit(("ws", f"{parts.hostname}:{parts.port or 443}", parts.path or "/", parts.query, ""))
    try:
        conn: ClientConnection = ws_connect(plain, sock=relay.inner, open_timeout=open_timeout, **kw)
    except Exception as e:
        how = "hung and was shut down" if stuck.is_set() else "failed"
        relay.close()
        raise AssertionError(f"WebSocket open through the proxy {how}: {e!r}") from e
    finally:
        timer.cancel()
        spare.close()
    return conn
