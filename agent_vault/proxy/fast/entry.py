"""When a connection goes lean, and how it is taken off mitmproxy's layer stack.

A connection goes lean only if all hold when its first TLS bytes arrive (the `next_layer` hook):
the fast path is on (`--fast-path on`), the CONNECT was authenticated and bound and its target is
intercepted (mode `mitm`), and the client's complete ClientHello offers ALPN `http/1.1` and not `h2`
(clients that offer no ALPN, e.g. WebSocket libraries, and HTTP/2 clients stay on the engine). With
`--offer-h2 off` the proxy never selects h2, so a client offering both is lean too (TlsConfig's ALPN
callback, under the engine's `http2=False`, picks http/1.1 for it).
Nothing has been relayed at that point, so the decision is for the whole connection.

`FastLayer` replaces the TLS layer: it builds the client TLS with mitmproxy's TlsConfig (same leaf
certificate), feeds the buffered ClientHello, and then takes the client socket's reads off the
connection handler: `ClientProtocol` stands in for the handler's stream protocol, so ciphertext goes
from the socket's callback straight to the session (no StreamReader, no handler task, no layer stack),
while end of stream, loss and write flow control still reach the handler's protocol (its read loop ends
as before, its StreamWriter still drains). Bytes the handler had already read go the old way, through
its wrapped `server_event` (as `live.splice_tunnel` does). Close events still reach the layer, which
ends the session.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx, tls
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import parse_client_hello

from agent_vault.proxy import live
from agent_vault.proxy.fast.client import ClientSide
from agent_vault.proxy.fast.tlsio import TlsPump

if TYPE_CHECKING:
    from agent_vault.proxy.addon import VaultAddon


def lean_hello(data: bytes, offer_h2: bool = True) -> tls.ClientHello | None:
    """The parsed ClientHello if it is complete and offers http/1.1 and, unless the proxy offers only
    HTTP/1.1 (`offer_h2` False: the engine's ALPN choice is then http/1.1 for any client), not h2;
    else None. Parsed once here and handed to `FastLayer` (kaitai parsing is a cost per connection)."""
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return None
    if hello is None:
        return None
    offers = hello.alpn_protocols
    return hello if b"http/1.1" in offers and (not offer_h2 or b"h2" not in offers) else None


class FastLayer(layer.Layer):
    """The layer a lean connection ends in (see the module docstring)."""

    def __init__(
        self, context: Context, addon: VaultAddon, target: tuple[str, int], hello: tls.ClientHello
    ) -> None:
        super().__init__(context)
        self.addon, self.target = addon, target
        self.side: ClientSide | None = None
        self.task: asyncio.Task[None] | None = None
        self.context.client.sni = hello.sni
        self.context.client.alpn_offers = hello.alpn_protocols

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if not self._start():  # no live handler (shutting down): nothing was relayed; close
                yield commands.CloseConnection(self.context.client)
        elif isinstance(event, events.DataReceived) and event.connection is self.context.client:
            if self.side is not None:
                self.side.take(event.data)
        elif isinstance(event, events.ConnectionClosed):
            # The session reads EOF; a request in flight is cancelled by `client_disconnected`
            # (after approval holds are cancelled for the client, as on the engine).
            if self.side is not None:
                self.side.closed()
            yield commands.CloseConnection(self.context.client)
        yield from ()

    def _start(self) -> bool:
        from agent_vault.proxy.fast.session import Session

        client = self.context.client
        handler = live.handler_of(client.id)
        io = handler.transports.get(client) if handler is not None else None
        if handler is None or io is None or io.writer is None:
            return False
        data = tls.TlsData(client, self.context)
        ctx.master.addons.get("tlsconfig").tls_start_client(data)  # type: ignore[no-untyped-call]
        assert data.ssl_conn is not None
        self.side = side = ClientSide(
            TlsPump(data.ssl_conn), io.writer, handler.timeout_watchdog.register_activity, self.addon.metrics
        )
        _wrap(handler, client, side)
        _take_reads(io, side)
        sess = Session(self.addon, self.context, side, self.target, lambda: _close(client))
        self.task = asyncio.get_running_loop().create_task(sess.run())
        self.addon.fast_tasks[client.id] = self.task
        self.task.add_done_callback(lambda _t: self.addon.fast_tasks.pop(client.id, None))
        return True


def _close(client: Any) -> None:
    """Close the agent's connection unless the engine already dropped it (the agent hung up)."""
    handler = live.handler_of(client.id)
    if handler is not None and client in handler.transports:
        handler.close_connection(client)


class ClientProtocol(asyncio.Protocol):
    """The agent socket's protocol on a lean connection (see the module docstring)."""

    def __init__(self, inner: Any, side: ClientSide) -> None:
        self.inner, self.side = inner, side

    def data_received(self, data: bytes) -> None:
        self.side.push(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _take_reads(io: Any, side: ClientSide) -> None:
    """Give the socket's reads to `ClientProtocol` -- only if the handler's reader holds nothing yet
    (bytes in it must reach the session first, in order; else reads stay on the handler's loop)."""
    transport, reader = io.writer.transport, io.reader
    if getattr(reader, "_buffer", None) != bytearray() or reader.at_eof():
        return
    side.attach(transport.pause_reading, transport.resume_reading)
    transport.set_protocol(ClientProtocol(transport.get_protocol(), side))


def _wrap(handler: Any, client: Any, side: ClientSide) -> None:
    """Client data goes straight to the session; everything else still goes through the layers."""
    original = handler.server_event

    async def server_event(event: events.Event) -> None:
        if type(event) is events.DataReceived and event.connection is client:
            handler.timeout_watchdog.register_activity()
            await side.deliver(event.data)
            return
        await original(event)

    handler.server_event = server_event
