"""Memory bounds of the engine's HTTP/2 send queues (toward agents and upstreams) and finished streams.

mitmproxy's HTTP/2 layer has three ways to grow without a limit; `install()` (called by
`engine.install`; one engine per process) closes them by making the HTTP layer build
`BoundedHttp2Server` for HTTP/2 agents and `BoundedHttp2Client` for HTTP/2 upstreams, and by
wrapping `ConnectionHandler.drain_writers`:

* **Send queue toward a slow agent.** `BufferedH2Connection` queues DATA in `stream_buffers` while
  the agent's flow-control window is closed, and the engine keeps reading the upstream, so an agent
  that never reads (or a fast upstream) grows that queue with the upstream's rate. Here the read
  loop of an upstream connection waits, after each read, while a stream it feeds holds more than
  `STREAM_HIGH` queued bytes, or while the agent connection holds more than `connection_high`
  (`--max-buffered-bytes`) in all; it reads on once they fall to half of that. This is HTTP/1's
  backpressure (the engine drains socket writers after each read): the upstream's TCP window
  closes, nothing is dropped and nothing is audited, since nothing failed. A stalled exchange ends
  like any idle one (`--idle-timeout`). Limits: an HTTP/2 upstream connection carries several
  streams, so holding it back for one unread stream stalls its other streams too (head-of-line);
  the bound is the caps plus what one upstream read turns into (its decoded size, itself capped by
  the response decoder); HTTP/3 agents are not covered.
* **Send queue toward a slow upstream.** The same queue on the client side: an upstream that keeps
  its flow-control window closed (or its MAX_CONCURRENT_STREAMS full, which queues whole requests in
  `stream_queue`) while the engine keeps reading a streamed upload from the agent grew by the
  agent's rate, bounded only by `--max-request-bytes`. Here the agent's read loop waits, after each
  read, while the request bytes queued toward its HTTP/2 upstreams pass `UPLOAD_HIGH` in all, and
  reads on once they fall to half of that (woken by the upstreams' reads): the agent's TCP window
  closes. Limits: one cap for the whole agent connection, so an HTTP/2 agent's other streams wait
  too (head-of-line); while an upstream of that agent is itself held back for the agent's window
  (the item above), the cap is `connection_high` instead, since the agent's reads carry the
  window updates that free it; past that both sides wait until `--idle-timeout` ends them.
* **Streams answered and closed stay in memory.** The HTTP layer forgets a stream only when its
  exchange completes normally (`DropStream`); a stream the proxy answered itself before reading the
  request body (or one that ended in an error) kept its `HttpStream` and flow until the connection
  closed, and the HTTP/2 layer kept every finished stream id in `streams`. Whenever an agent opens
  new streams, the streams whose HTTP/2 stream is closed are forgotten here, the `HttpStream` only
  once it can do nothing more (both sides done or errored, no hook pending), so one connection
  holds about as many streams as it has open (at most 100, the engine's concurrency setting).

Every engine name used here is checked by `engine_compat._patch_points`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy.connection import Connection, ConnectionState
from mitmproxy.proxy import events, layer, server
from mitmproxy.proxy.layers import http as mhttp

from agent_vault.proxy.engine_compat import Http2Client, Http2Server, ReceiveHttp, RequestData, RequestHeaders

STREAM_HIGH = 1 << 20  # bytes queued toward the agent on one stream before its upstream is held back
UPLOAD_HIGH = 1 << 20  # request bytes queued toward an agent's HTTP/2 upstreams before its reads wait
WAKE_POLL = 1.0  # seconds between re-checks of a held-back read loop (besides the other side's reads)

_Http2Server: Any = Http2Server  # mitmproxy's classes (what HttpLayer builds unless installed)
_Http2Client: Any = Http2Client


class BoundedHttp2Server(_Http2Server):  # type: ignore[misc]
    """mitmproxy's HTTP/2 server layer that reports its send queue to the connection handler and
    forgets closed streams (see the module docstring)."""

    connection_high = 32 << 20  # set_limit() sets --max-buffered-bytes

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._room = asyncio.Event()  # set (and replaced) when the agent's reads may have made room
        self.waiting = 0  # upstream read loops held back (wait_for_room)
        _agents[context.client.id] = self

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        opened = False
        gen, reply = super()._handle_event(event), None
        while True:
            try:
                cmd = gen.send(reply)
            except StopIteration:
                break
            opened = opened or (isinstance(cmd, ReceiveHttp) and isinstance(cmd.event, RequestHeaders))
            reply = yield cmd
        if opened:
            yield from self._forget_closed()

    def _forget_closed(self) -> layer.CommandGenerator[None]:
        """Drop the ids of closed HTTP/2 streams, and tell the HTTP layer to drop their finished
        `HttpStream`s (a stream still busy, e.g. with a hook pending, is kept for a later round)."""
        for sid in [s for s in self.streams if self.is_closed(s)]:
            del self.streams[sid]
        http_layer = self._http_layer()
        if http_layer is None:
            return
        for sid, stream in list(http_layer.streams.items()):
            if self.is_closed(sid) and _finished(stream):
                yield mhttp.DropStream(sid)

    def _http_layer(self) -> Any | None:
        """The HttpLayer this connection layer belongs to (it built us with a fork of its context)."""
        parent = self.context.layers[-2] if len(self.context.layers) >= 2 else None
        return parent if isinstance(parent, mhttp.HttpLayer) else None

    def holds_back(self, upstream: Connection, factor: float = 1.0) -> bool:
        """Whether reading `upstream` must wait: a stream it feeds has more than `STREAM_HIGH`
        (times `factor`) bytes queued toward the agent, or all streams more than `connection_high`."""
        buffers = self.h2_conn.stream_buffers
        if not buffers:
            return False
        http_layer = self._http_layer()
        streams = http_layer.streams if http_layer is not None else {}
        total = 0
        for sid, queue in buffers.items():
            queued = sum(len(chunk.data) for chunk in queue)
            total += queued
            if queued > STREAM_HIGH * factor:
                stream = streams.get(sid)
                if stream is not None and stream.context.server is upstream:
                    return True
        return total > self.connection_high * factor

    def room_made(self) -> None:
        """The agent's connection was read (window updates, resets): held-back upstreams re-check."""
        self._room.set()
        self._room = asyncio.Event()

    async def wait_for_room(self, upstream: Connection) -> None:
        """Return once reading `upstream` may go on (the queues fell to half their caps). Cancelled
        with the upstream's read loop when either connection closes."""
        self.waiting += 1
        try:
            while self.holds_back(upstream, 0.5):
                with contextlib.suppress(TimeoutError):  # a re-check now and then, woken or not
                    await asyncio.wait_for(self._room.wait(), WAKE_POLL)
        finally:
            self.waiting -= 1


def _finished(stream: Any) -> bool:
    """An HttpStream that can do nothing more: both sides done or errored, no hook pending."""
    over = (stream.state_done, stream.state_errored)
    return (
        stream.client_state in over
        and stream.server_state in over
        and stream._paused is None
        and stream.child_layer is None
    )


# client connection id -> the HTTP/2 layer of that agent connection (gone with the connection)
_agents: weakref.WeakValueDictionary[str, BoundedHttp2Server] = weakref.WeakValueDictionary()


class BoundedHttp2Client(_Http2Client):  # type: ignore[misc]
    """mitmproxy's HTTP/2 client layer (toward an upstream) that reports what it queues for the
    upstream to its agent connection's `Uploads` (see the module docstring)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.uploads = _uploads.get(context.client.id) or Uploads()
        _uploads[context.client.id] = self.uploads  # kept alive by its clients
        self.uploads.clients.add(self)

    def queued(self) -> int:
        """Request bytes waiting for this upstream: DATA for its flow-control window, and requests
        for a free stream (`stream_queue`). A closed upstream's queues are never sent: 0."""
        if not self.conn.state & ConnectionState.CAN_WRITE:
            return 0
        total = sum(len(chunk.data) for queue in self.h2_conn.stream_buffers.values() for chunk in queue)
        for waiting in self.stream_queue.values():
            total += sum(len(ev.data) for ev in waiting if isinstance(ev, RequestData))
        return total


class Uploads:
    """The HTTP/2 upstream layers of one agent connection, and the wait of its read loop."""

    __slots__ = ("__weakref__", "clients", "room", "waiting")

    def __init__(self) -> None:
        self.clients: weakref.WeakSet[BoundedHttp2Client] = weakref.WeakSet()
        self.room = asyncio.Event()  # set (and replaced) when an upstream's read may have made room
        self.waiting = 0  # 1 while the agent's read loop waits (wait_for_room)

    def queued(self) -> int:
        return sum(c.queued() for c in list(self.clients))

    def pending(self) -> bool:
        """Cheap: whether any upstream queues anything at all (the usual answer is no)."""
        return any(c.h2_conn.stream_buffers or c.stream_queue for c in list(self.clients))

    def room_made(self) -> None:
        self.room.set()
        self.room = asyncio.Event()

    async def wait_for_room(self, high: Callable[[], int]) -> None:
        """Return once the queues fell to half of `high()` (re-read each round: it depends on the
        agent's own state). Cancelled with the agent's read loop when a connection closes."""
        self.waiting += 1
        try:
            while self.queued() > high() // 2:
                with contextlib.suppress(TimeoutError):  # a re-check now and then, woken or not
                    await asyncio.wait_for(self.room.wait(), WAKE_POLL)
        finally:
            self.waiting -= 1


# client connection id -> what that agent connection queues toward HTTP/2 upstreams
_uploads: weakref.WeakValueDictionary[str, Uploads] = weakref.WeakValueDictionary()


def _upload_high(agent: BoundedHttp2Server | None) -> int:
    """The upload cap: `connection_high` while an upstream waits for this agent's window updates
    (which only the agent's reads bring), else UPLOAD_HIGH."""
    return BoundedHttp2Server.connection_high if agent is not None and agent.waiting else UPLOAD_HIGH


def set_limit(connection_high: int) -> None:
    """Hold back the upstreams of an HTTP/2 agent connection past `connection_high` queued bytes."""
    BoundedHttp2Server.connection_high = connection_high


def _reading(handler: Any) -> Connection | None:
    """The connection whose read loop runs this task (the engine reads each one in its own task)."""
    task = asyncio.current_task()
    for conn, io in handler.transports.items():
        if io.handler is task:
            return conn  # type: ignore[no-any-return]
    return None


def _bounded_drain(
    orig: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """ConnectionHandler.drain_writers (awaited after every read, cancellation handled there) that
    also holds an upstream's read loop back while the agent's HTTP/2 send queue is over its caps,
    and the agent's read loop while what it queued toward HTTP/2 upstreams is over UPLOAD_HIGH.
    Each wait is lifted by the other side's reads (window updates), never by its own."""

    async def drain_writers(self: Any) -> None:
        await orig(self)
        agent = _agents.get(self.client.id)
        uploads = _uploads.get(self.client.id)
        if uploads is not None and uploads.waiting:  # an upstream's read may have made room
            uploads.room_made()
        if agent is not None:
            if agent.waiting:  # a held-back upstream re-checks (a read of the agent may have made room)
                agent.room_made()
            if agent.h2_conn.stream_buffers:
                conn = _reading(self)
                if conn is not None and conn is not self.client and agent.holds_back(conn):
                    # counted in agent.waiting before the agent's loop (woken above) re-checks its cap
                    await agent.wait_for_room(conn)
                    return
        if (
            uploads is not None
            and uploads.pending()
            and uploads.queued() > _upload_high(agent)
            and _reading(self) is self.client
        ):
            await uploads.wait_for_room(lambda: _upload_high(agent))

    return drain_writers


_saved: tuple[Any, ...] | None = None


def install() -> None:
    """Build BoundedHttp2Server for HTTP/2 agents and BoundedHttp2Client for HTTP/2 upstreams, and
    hold back the read loop that feeds a full queue (idempotent)."""
    global _saved
    if _saved is None:
        _saved = (
            vars(mhttp)["Http2Server"],
            server.ConnectionHandler.drain_writers,
            vars(mhttp)["Http2Client"],
        )
        setattr(mhttp, "Http2Server", BoundedHttp2Server)  # noqa: B010 - HttpLayer._handle_event reads it
        setattr(mhttp, "Http2Client", BoundedHttp2Client)  # noqa: B010 - HttpLayer and HttpClient read it
        drain = _bounded_drain(_saved[1])
        setattr(server.ConnectionHandler, "drain_writers", drain)  # noqa: B010 - handle_connection awaits it


def uninstall() -> None:
    global _saved
    if _saved is not None:
        setattr(mhttp, "Http2Server", _saved[0])  # noqa: B010
        setattr(server.ConnectionHandler, "drain_writers", _saved[1])  # noqa: B010
        setattr(mhttp, "Http2Client", _saved[2])  # noqa: B010
        _saved = None
