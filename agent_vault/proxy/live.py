"""Operations on the engine's live connections: the raw tunnel relay (counted, then spliced off the
layer stack), and closing or aborting a connection by its client id.

`TunnelLayer` is mitmproxy's raw TCP relay without a flow (no per-chunk hooks, nothing stored) that
counts the bytes it relays, for the tunnel's audit record; `splice_tunnel` then takes the relay of an
established tunnel off the layer stack. The handler helpers reach mitmproxy's `Proxyserver`
connection table (its names are checked at start-up by `engine_compat`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy.connection import Connection
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import TCPLayer


def handler_of(client_id: str) -> Any | None:
    """mitmproxy's connection handler of a client connection, or None (gone, or no engine running)."""
    try:
        return ctx.master.addons.get("proxyserver").connections.get(client_id)  # type: ignore[no-untyped-call]
    except AttributeError:  # no master: unit tests with a bare addon
        return None


def close_client(client_id: str) -> None:
    """Close a client connection (and with it its upstream); no-op if it is gone."""
    handler = handler_of(client_id)
    if handler is not None:
        handler.close_connection(handler.client)


def abort_server(client_id: str, server: Connection) -> None:
    """Drop the upstream connection at the socket (abort, no FIN handshake): the engine then reads an
    end of stream, as if the upstream had hung up mid-body, resets the response to the agent and
    runs the `error` hook. (Closing through the engine's `close_connection` cancels the reader task,
    which can lose that notification.) Best effort: no-op without a live engine."""
    handler = handler_of(client_id)
    io = handler.transports.get(server) if handler is not None else None
    transport = getattr(getattr(io, "writer", None), "transport", None)
    if transport is not None:
        transport.abort()


class ByteCounter:
    """Bytes relayed in each direction (mutable; shared with the connection's state)."""

    __slots__ = ("down", "up")

    def __init__(self) -> None:
        self.up = self.down = 0


class TunnelLayer(TCPLayer):
    """A raw relay like `TCPLayer(ignore=True)` that counts bytes into `counter`. Once both sides are
    open, `splice(context, counter)` (if given) may take the relay off the layer stack."""

    def __init__(
        self,
        context: Context,
        counter: ByteCounter,
        splice: Callable[[Context, ByteCounter], None] | None = None,
    ) -> None:
        super().__init__(context, ignore=True)
        self.counter = counter
        self._splice = splice

    def relay_messages(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived):
            if event.connection == self.context.client:
                self.counter.up += len(event.data)
            else:
                self.counter.down += len(event.data)
        yield from super().relay_messages(event)
        if self._splice is not None and self.context.server.connected and self.context.client.connected:
            splice, self._splice = self._splice, None
            splice(self.context, self.counter)


def splice_tunnel(handler: Any, client: Connection, server: Connection, counter: ByteCounter) -> None:
    """Relay a raw tunnel's bytes straight between its two sockets.

    mitmproxy hands every chunk of a tunnel through the whole layer stack (HTTP proxy layer, CONNECT
    stream, next layer, TCP layer) and back as a SendData command: most of a tunnel's CPU. For a
    tunnel nothing inspects the bytes, so the connection handler's `server_event` is wrapped: a
    DataReceived on one side is written to the other side's writer at once (counted, and as activity
    for the idle timeout). Everything else -- half-close, close, errors, revocation -- still goes
    through the layers; backpressure is unchanged (the handler drains its writers after each read).
    """
    original = handler.server_event

    async def server_event(event: events.Event) -> None:
        if type(event) is events.DataReceived:
            src = event.connection
            dst = server if src is client else client if src is server else None
            io = handler.transports.get(dst) if dst is not None else None
            if io is not None and io.writer is not None and not io.writer.is_closing():
                if src is client:
                    counter.up += len(event.data)
                else:
                    counter.down += len(event.data)
                handler.timeout_watchdog.register_activity()
                io.writer.write(event.data)
                return
        await original(event)

    handler.server_event = server_event
