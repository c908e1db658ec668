"""A loopback TLS server whose connections a test handles with plain blocking socket code: for hostile
upstreams that no well-behaved server library would play (answering before the request is read,
flooding, an HTTP/2 peer that never opens its flow-control window).

`RawTLSServer(ca, handler, alpn=...)` binds 127.0.0.1 on an ephemeral port (`.port`), accepts in a
background thread and runs `handler(tls_socket)` in a thread per connection (socket timeout 30 s).
On exit it closes the listener and every connection (a blocked handler then fails with OSError,
or ValueError, which are swallowed) and joins the threads.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import trustme

from helpers.upstream import DEFAULT_HOSTNAMES, LOOPBACK

Handler = Callable[[ssl.SSLSocket], None]


class RawTLSServer:
    """See the module docstring. `errors` keeps what handlers raised besides OSError/SSLError."""

    def __init__(
        self,
        ca: trustme.CA,
        handler: Handler,
        *,
        alpn: Sequence[str] = ("http/1.1",),
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    ) -> None:
        self.handler = handler
        self.errors: list[BaseException] = []
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*hostnames).configure_cert(self._ctx)
        self._ctx.set_alpn_protocols(list(alpn))
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Self:
        t = threading.Thread(target=self._accept, name="raw-tls-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in self._threads:
            t.join(10)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                t = threading.Thread(target=self._serve, args=(sock,), name="raw-tls-conn", daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        try:
            with self._ctx.wrap_socket(sock, server_side=True) as tls:  # takes over sock's descriptor
                with self._lock:
                    if self._closed:
                        return
                    self._conns.append(tls)
                self.handler(tls)
        except (OSError, ValueError):  # SSLError is an OSError; ValueError: used after __exit__ shut it
            pass  # the proxy (or __exit__) closed the connection
        except BaseException as e:  # noqa: BLE001 - kept for the test to report
            self.errors.append(e)


def read_head(tls: ssl.SSLSocket, limit: int = 1 << 16) -> bytes:
    """Read up to the end of an HTTP/1 head (bytes after it in the same read are returned too)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = tls.recv(limit)
        if not piece:
            raise ConnectionError("closed before a complete head")
        data += piece
        if len(data) > limit:
            raise ConnectionError("head too long")
    return data
