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

Also the pure head checks the engine's `read_headers` wrapper uses (`blank_lines`, `smuggling_prone`).
Private mitmproxy names used here are checked by `engine_compat._patch_points`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from mitmproxy import http
from mitmproxy.net.http.validate import validate_headers
from mitmproxy.proxy import commands, events, layer

from agent_vault.proxy.answers import MAX_HEAD_BYTES
from agent_vault.proxy.engine_compat import (
    RequestData,
    RequestEndOfMessage,
    ResponseEndOfMessage,
    ResponseHeaders,
    _http1,
)

# Input kept from a client whose request waits for its response: room for a few pipelined heads at
# their limit; the same as the fast path's inbox (`fast.client.INBOX_LIMIT`), past which that path
# stops reading the socket, so both paths hold at most this much of a waiting client's bytes.
WAITING_INPUT_CAP = 4 * MAX_HEAD_BYTES
_OVERFLOW = "_agent_vault_overflow"  # Http1Server attribute: input past the cap was dropped


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


_saved: tuple[Any, Any] | None = None


def install() -> None:
    """Bound the input of an HTTP/1 client waiting for its response (idempotent; engine.install)."""
    global _saved
    if _saved is None:
        server = _http1.Http1Server
        _saved = (server.__dict__.get("wait"), server.__dict__.get("send"))
        setattr(server, "wait", _bounded_wait(server.wait))  # noqa: B010 - read as self.wait (state)
        setattr(server, "send", _bounded_send(server.send))  # noqa: B010


def uninstall() -> None:
    global _saved
    if _saved is not None:
        server = _http1.Http1Server
        for name, orig in zip(("wait", "send"), _saved, strict=True):
            if orig is None:
                delattr(server, name)  # inherited from Http1Connection
            else:
                setattr(server, name, orig)
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
