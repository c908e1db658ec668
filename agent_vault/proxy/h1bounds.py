"""Memory bounds on what an HTTP/1 client sends while its request waits (SPEC §5.10; memory audit).

mitmproxy reads a client socket as fast as bytes come, with no backpressure, so whatever a client
sends while its request waits is kept in memory. Two places did so without limit:

* `HeldBodyCap` (a mixin of the engine's `VaultHttpStream`): while a hook holds the stream (an
  approval hold, a DNS lookup, an OAuth2 token fetch), the request body's events queue in the
  stream layer. A Content-Length body was bounded by `--max-request-bytes`; a chunked one (or HTTP/2
  DATA without a length) was not. Now the queued body counts against that limit whatever its
  framing: the event that crosses it is kept, and every later body event is dropped, the body's end
  included (a cut body can never be forwarded as complete). When the hook ends, the request phase's
  own counters (`streams.limited_upload`, `BufferWhole`) meet the crossing event and answer 413
  `body_too_large` with `limit_bytes`, audited, as on the fast path, which reads nothing during a
  hook (TCP backpressure) and meets the limit in the same counters once the hold is approved.
* `install()` wraps `Http1Server.wait` and `.send`: once a request is read whole and waits for its
  response, mitmproxy appends every byte the client sends to its receive buffer (pipelining, or
  garbage) until the response is done (up to the first-byte timeout). Past `WAITING_INPUT_CAP` the
  buffer is dropped, and so is everything after it; the in-flight request still gets its response
  (with `Connection: close` when its head is not out yet) and its audit record, then the
  connection closes. The dropped bytes are never parsed as a request.
* `install()` also wraps `Http1Client._handle_event`: an upstream that answers before the request
  body is sent whole (the engine streams uploads) and then keeps sending had every further byte
  appended to the client's receive buffer (kept until the upload ends), and each read crashed the
  stream layer (mitmproxy re-reported the finished response: one traceback logged per read). Now
  any byte after a complete response, while the request is still sent, and any unparsed input past
  `UPSTREAM_INPUT_CAP` in whatever state (far above a head at its limit or a chunk line plus one
  read, which are refused earlier), is an overrun: the buffer is dropped, the upstream connection
  closed and the stream gets a protocol error. With a response already sent (the early answer),
  the agent's HTTP/1 connection is closed (HTTP/2: the stream is reset), as when an upstream closes
  early; otherwise the agent gets a 502 `upstream_unreachable` JSON and the request an error audit
  record. The fast path reads an upstream only after the request is sent whole (TCP backpressure).

Also the pure head checks the engine's `read_headers` wrapper uses (`blank_lines`, `smuggling_prone`).
Private mitmproxy names used here are checked by `engine_compat._patch_points`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from mitmproxy import http
from mitmproxy.net.http.validate import validate_headers
from mitmproxy.proxy import commands, events, layer

from agent_vault.proxy.answers import MAX_HEAD_BYTES, UPSTREAM_OVERRUN
from agent_vault.proxy.engine_compat import (
    ErrorCode,
    ReceiveHttp,
    RequestData,
    RequestEndOfMessage,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    _http1,
)

# Input kept from a client whose request waits for its response: room for a few pipelined heads at
# their limit; the same as the fast path's inbox (`fast.client.INBOX_LIMIT`), past which that path
# stops reading the socket, so both paths hold at most this much of a waiting client's bytes.
WAITING_INPUT_CAP = 4 * MAX_HEAD_BYTES
_OVERFLOW = "_agent_vault_overflow"  # Http1Server attribute: input past the cap was dropped
# Unparsed input kept from an upstream (Http1Client): a response head over MAX_HEAD_BYTES, or a chunk
# line over `bodyreader.MAX_BODY_LINE`, is refused before the buffer gets near this.
UPSTREAM_INPUT_CAP = WAITING_INPUT_CAP

log = logging.getLogger("agent_vault.proxy")


class HeldBodyCap(layer.Layer):
    """Bound on the request body queued while a hook holds the stream (see the module docstring).
    Danger: only the queue is bounded here; refusing the body is left to the request's own counters,
    which every request with a body of unknown length has (a stream callable or `BufferWhole`)."""

    held_limit: ClassVar[int] = 1 << 30  # set_request_limit() sets --max-request-bytes
    _held = 0  # body bytes queued while held
    _held_over = False  # the queue crossed held_limit: later body events are dropped

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        # not a generator itself: no extra generator frame per event on the hot path
        if self._paused is not None and isinstance(event, RequestData | RequestEndOfMessage):
            if self._held_over:
                return _nothing()  # never queued: the body is refused when the stream resumes
            if isinstance(event, RequestData):
                self._held += len(event.data)
                self._held_over = self._held > self.held_limit
        return super().handle_event(event)


def _nothing() -> layer.CommandGenerator[None]:
    yield from ()


def set_request_limit(limit: int) -> None:
    """A request body queued while held counts against `limit` bytes (--max-request-bytes)."""
    HeldBodyCap.held_limit = limit


def _bounded_wait(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Server.wait that drops the receive buffer once it passes WAITING_INPUT_CAP (and all
    input after it); `_bounded_send` then closes the connection after the response."""

    def wait(self: Any, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and (
            getattr(self, _OVERFLOW, False) or len(self.buf) > WAITING_INPUT_CAP
        ):
            self.buf.maybe_extract_at_most(len(self.buf))  # nothing of it is parsed, kept or echoed
            setattr(self, _OVERFLOW, True)
            return
        yield from orig(self, event)

    return wait


def _bounded_send(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Server.send that ends the connection with the response once input was dropped."""

    def send(self: Any, event: Any) -> layer.CommandGenerator[None]:
        if getattr(self, _OVERFLOW, False):
            if isinstance(event, ResponseHeaders) and event.response.status_code >= 200:
                event.response.headers["connection"] = "close"  # mark_done closes after the body
            elif isinstance(event, ResponseEndOfMessage):
                self.buf.maybe_extract_at_most(len(self.buf))  # never read as a next request
                yield from orig(self, event)
                if self.state != self.done:  # the head went out before the overflow
                    yield commands.CloseConnection(self.conn)
                    self.state = self.done
                return
        yield from orig(self, event)

    return send


def _bounded_upstream_input(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Client._handle_event that refuses an upstream sending past its complete response while
    the request is still sent, or whose unparsed input would pass UPSTREAM_INPUT_CAP (see the module
    docstring). Not a generator itself: no extra frame per event."""

    def _handle_event(self: Any, event: events.Event) -> layer.CommandGenerator[None]:
        if (
            isinstance(event, events.DataReceived)
            and (
                (self.response_done and not self.request_done)  # reset to False once both are done
                or len(self.buf) + len(event.data) > UPSTREAM_INPUT_CAP
            )
            and self.state != self.passthrough  # a tunnel or an upgrade: relayed, never buffered
            and self.state != self.done
        ):
            return _upstream_overrun(self)
        return orig(self, event)  # type: ignore[no-any-return]

    _handle_event.__wrapped__ = orig  # type: ignore[attr-defined]  # engine_compat checks it
    return _handle_event


def _upstream_overrun(client: Any) -> layer.CommandGenerator[None]:
    """Drop the upstream's input, close it, fail its stream (mitmproxy's own protocol-error steps)."""
    client.buf.maybe_extract_at_most(len(client.buf))  # nothing of it is parsed, kept or echoed
    client.state = client.done
    log.warning("upstream %s sent more than its response: connection closed", client.conn.address)
    yield commands.CloseConnection(client.conn)
    if client.stream_id is not None:
        yield ReceiveHttp(
            ResponseProtocolError(client.stream_id, UPSTREAM_OVERRUN, ErrorCode.GENERIC_SERVER_ERROR)
        )


_saved: tuple[Any, Any, Any] | None = None


def install() -> None:
    """Bound the input of an HTTP/1 client waiting for its response and of an HTTP/1 upstream
    (idempotent; engine.install)."""
    global _saved
    if _saved is None:
        server, client = _http1.Http1Server, _http1.Http1Client
        _saved = (
            server.__dict__.get("wait"),
            server.__dict__.get("send"),
            client.__dict__.get("_handle_event"),
        )
        setattr(server, "wait", _bounded_wait(server.wait))  # noqa: B010 - read as self.wait (state)
        setattr(server, "send", _bounded_send(server.send))  # noqa: B010
        setattr(client, "_handle_event", _bounded_upstream_input(client._handle_event))  # noqa: B010


def uninstall() -> None:
    global _saved
    if _saved is not None:
        targets = (_http1.Http1Server, _http1.Http1Server, _http1.Http1Client)
        for cls, name, orig in zip(targets, ("wait", "send", "_handle_event"), _saved, strict=True):
            if orig is None:
                delattr(cls, name)  # inherited from Http1Connection
            else:
                setattr(cls, name, orig)
        _saved = None


# ---- pure head checks (engine's read_headers wrapper and the fast path share their outcomes) --------


def smuggling_prone(request: http.Request | None) -> bool:
    """What the engine's `validate_headers` refuses (CL with TE, several TE, TE on HTTP/1.0, bad names)."""
    if request is None:
        return False
    try:
        validate_headers(request)
    except ValueError:
        return True
    return False


def blank_lines(raw: bytes) -> int:
    """How many bytes of empty lines (CRLF or LF, h11's units) lead `raw`. mitmproxy's Http1Server takes
    one per read event and then waits for more data, so a request sent after one (RFC 9112 2.2: to be
    ignored) hung the connection when it came in the same read; the fast path skips them all."""
    i = 0
    while True:
        if raw[i : i + 1] == b"\n":
            i += 1
        elif raw[i : i + 2] == b"\r\n":
            i += 2
        else:
            return i
