"""SPEC §6 `upstream_timeout` (504): an upstream that does not connect, or does not answer, in time.

Two deadlines, the same on the engine and the fast path (`--connect-timeout`, 10 s;
`--first-byte-timeout`, 600 s):

* connect: from the `server_connect` hook (DNS and the SSRF check included) until the connection is
  up, its TLS handshake included. The engine's dial is mitmproxy's own
  (`ConnectionHandler.open_connection`), so `ConnectWatch` cancels that task with a message saying
  "timed out": mitmproxy reports it as the connection's error and the stream answers the 504. A TLS
  handshake that hangs is cut at the socket; the stream learns why from `cut_handshake`.
* first byte: from the request completely sent (its body too: an upload takes as long as it needs)
  until the response head arrives. On the engine `FirstByteWatch` (used by `VaultHttpStream`) aborts
  the upstream socket when it expires; the stream then reads the upstream's end, and `timed_out` turns
  that into the 504 instead of "closed before answering". The fast path wraps its read of the head.

Each deadline is a loop timer (`call_later`), cancelled as soon as it is met: nothing lingers per
request. Process-wide values (`configure`, from the addon's `running`): one engine per process.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from mitmproxy import connection

from agent_vault.proxy import live

CONNECT_TIMED_OUT = "connect timed out"
FIRST_BYTE_TIMED_OUT = "timed out waiting for the response"
_EXPIRED_MAX = 1024
_RECHECK = 0.25  # a deadline that expires before the dial started (DNS in the hook) looks again after this


class Deadlines:
    connect = 10.0
    first_byte = 600.0


def configure(connect: float, first_byte: float) -> None:
    Deadlines.connect, Deadlines.first_byte = connect, first_byte


class ConnectWatch:
    """The engine's connect deadline, per upstream connection (see the module docstring): armed at
    `server_connect`, met at `server_connected` for plain TCP, else when the TLS handshake ends."""

    def __init__(self) -> None:
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._expired: dict[str, None] = {}  # clients whose upstream TLS handshake was cut (bounded, FIFO)

    def arm(self, client_id: str, server: connection.Server) -> None:
        """From `server_connect`: the deadline starts now."""
        self.disarm(server)
        loop = asyncio.get_running_loop()
        self._timers[server.id] = loop.call_later(Deadlines.connect, self._expire, client_id, server)

    def connected(self, server: connection.Server) -> None:
        """From `server_connected`: met, unless a TLS handshake follows (`server.tls`)."""
        if not server.tls:
            self.disarm(server)

    def disarm(self, server: connection.Connection) -> None:
        """Met (or failed otherwise): `server_connect_error`, the TLS hooks, `server_disconnected`."""
        timer = self._timers.pop(server.id, None)
        if timer is not None:
            timer.cancel()

    def cut_handshake(self, client_id: str) -> bool:
        """True (once) if an upstream TLS handshake for this client connection failed because its
        deadline cut it (the engine may dial a `Server` other than the one its flow names)."""
        return self._expired.pop(client_id, 1) is None

    def _expire(self, client_id: str, server: connection.Server) -> None:
        self._timers.pop(server.id, None)
        if server.error or server.tls_established:
            return
        handler = live.handler_of(client_id)
        io = handler.transports.get(server) if handler is not None else None
        task = getattr(io, "handler", None)
        if task is None or task.done():
            return
        if server.state is connection.ConnectionState.CLOSED:
            if server.timestamp_start is None:
                # still in the `server_connect` hook (or waiting for mitmproxy's per-address slot), where
                # a cancellation would not be reported: look again shortly
                loop = asyncio.get_running_loop()
                self._timers[server.id] = loop.call_later(_RECHECK, self._expire, client_id, server)
                return
            task.cancel(CONNECT_TIMED_OUT)  # mitmproxy: connection.error = str(CancelledError) -> the 504
        elif server.tls:  # connected, the TLS handshake is what hangs: cut it, remember why
            self._expired[client_id] = None
            while len(self._expired) > _EXPIRED_MAX:
                del self._expired[next(iter(self._expired))]
            live.abort_server(client_id, server)


class FirstByteWatch:
    """The engine's first-byte deadline for one HTTP stream (see the module docstring). `update` after
    every event the stream handles: arms when the request is sent and no head has come, disarms after.
    At expiry `waiting` (held weakly: a stream is never kept alive by its timer) is asked again, so a
    stream that moved on without an event can never have its upstream cut."""

    __slots__ = ("_timer", "timed_out")

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self.timed_out = False

    def update(self, waiting: Callable[[], bool], client_id: str, server: Any) -> None:
        now = waiting()
        if now and self._timer is None and not self.timed_out:
            loop = asyncio.get_running_loop()
            check = weakref.WeakMethod(waiting)
            self._timer = loop.call_later(Deadlines.first_byte, self._expire, check, client_id, server)
        elif not now and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, check: Callable[[], Callable[[], bool] | None], client_id: str, server: Any) -> None:
        self._timer = None
        waiting = check()
        if waiting is not None and waiting():
            self.timed_out = True
            live.abort_server(client_id, server)


CONNECT_WATCH = ConnectWatch()  # the process's one engine (`VaultAddon` arms it, `VaultHttpStream` asks it)
