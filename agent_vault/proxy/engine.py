"""What mitmproxy hooks cannot express: SPEC §6 answers for failures the engine handles itself.

mitmproxy answers a failed upstream connect or TLS handshake (502) and a malformed or origin-form
request (400) with its own HTML page, after the `error` hook has run, so an addon cannot replace
it. `install()` (called by ProxyRunner; one engine per process) therefore:

* makes the HTTP layer build `VaultHttpStream`, which turns an upstream failure before response
  headers into an ordinary response (`flow.response` = SPEC §6 JSON; the `response` hook runs and
  audits it) for HTTP/1, HTTP/2 and HTTP/3 clients alike;
* refuses origin-form requests to the forward proxy instead of routing them by their `Host` header;
* sends a refusal decided at request-headers time at once and discards the request body, instead
  of buffering the whole body first (and instead of mitmproxy's crash when a buffered body of an
  answered request crosses `stream_large_bodies`);
* cuts a request body without Content-Length (chunked, HTTP/2 DATA) when it crosses the limit: the
  stream callable raises `BodyOverLimit`, the upstream request is reset (it never sees a complete
  body) and the client gets 413 `body_too_large` (with `limit_bytes`);
* reads a body the request phase marks `BufferWhole` (body substitution, a SigV4 payload hash) whole,
  never switching to streaming past `stream_large_bodies`, and refuses it (413) past its limit;
* answers every protocol error the stream sends its client before a response head with the SPEC §6
  JSON (`_answer_error`): mitmproxy's HTTP/2 and HTTP/3 layers would send an HTML page carrying the
  engine's raw message (request or upstream bytes: a leak);
* replaces the HTTP/1 error page used for the remaining early errors (bad request line, ...);
* drops mitmproxy's runtime type check of every parsed HTTP message (a debug aid, costly).

* caps the request head from a client and the response head from an upstream (`MAX_HEAD_BYTES`);
* makes the WebSocket layer refuse a message growing past a limit (close 1009);
* bounds what an HTTP/1 client sends while its request waits (`h1bounds`).

The answers themselves are built in `answers.py`; every private mitmproxy name comes from
`engine_compat`, which `install()` checks first. Messages name hosts and causes, never request
content: a bad request line may hold a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import wsproto.events
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.connection import Connection, ConnectionState
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as mhttp
from mitmproxy.proxy.layers import websocket as mws

from agent_vault.errors import AgentVaultError, BodyTooLarge
from agent_vault.proxy import engine_compat, h1bounds, h2bounds
from agent_vault.proxy.answers import (
    MAX_HEAD_BYTES,
    engine_error,
    error_response,
    h1_error_response,
    upstream_error,
)
from agent_vault.proxy.bodyreader import make_body_reader as capped_body_reader
from agent_vault.proxy.deadlines import CONNECT_TIMED_OUT, CONNECT_WATCH, FIRST_BYTE_TIMED_OUT, FirstByteWatch
from agent_vault.proxy.engine_compat import (
    ErrorCode,
    HttpErrorHook,
    ReceiveHttp,
    RequestData,
    RequestHeaders,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    _http1,
)
from agent_vault.proxy.fast import strict
from agent_vault.proxy.h1bounds import blank_lines, smuggling_prone

_UPSTREAM_FAILURES = (ErrorCode.CONNECT_FAILED, ErrorCode.GENERIC_SERVER_ERROR)


class BodyOverLimit(Exception):
    """Raised by a request `stream` callable when a body of unknown length crosses `limit_bytes`."""

    def __init__(self, limit_bytes: int, *, error: AgentVaultError | None = None) -> None:
        super().__init__(limit_bytes)
        self.limit_bytes = limit_bytes
        self.error = error  # another refusal that cuts the upload (e.g. exfiltration_blocked)


BUFFER_WHOLE = "agent_vault.buffer_whole"  # flow.metadata key of a BufferWhole


@dataclass(frozen=True, slots=True)
class BufferWhole:
    """Set (in `flow.metadata[BUFFER_WHOLE]`, with `request.stream = False`) by the request phase on
    a body it must see whole: both paths buffer it whatever its size, never streaming it past 1 MiB,
    and refuse it once more than `limit` bytes arrived. `refuse()` notes the refusal for the audit
    and returns it (a 413 `body_too_large` carrying `limit_bytes`)."""

    limit: int
    refuse: Callable[[], AgentVaultError]


class VaultHttpStream(h1bounds.HeldBodyCap, mhttp.HttpStream):
    """mitmproxy's HttpStream with SPEC §5.1/§6 answers (see the module docstring)."""

    _first_byte: FirstByteWatch | None = None
    _head_sent = False  # a final response head went to the client
    _refusal: AgentVaultError | None = None  # what this stream refused mid-body (the client's answer)

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from self._json_errors(super()._handle_event(event))
        if self._first_byte is None:
            if not self._awaiting_head():
                return
            self._first_byte = FirstByteWatch()
        self._first_byte.update(self._awaiting_head, self.context.client.id, self.context.server)

    def _awaiting_head(self) -> bool:
        """The request is sent whole and no response head has come (the first-byte deadline runs)."""
        flow: http.HTTPFlow | None = getattr(self, "flow", None)  # set at the request's headers
        return (
            flow is not None
            and flow.response is None
            and flow.error is None
            and self.client_state == self.state_done
            and self.server_state == self.state_wait_for_response_headers
        )

    def _json_errors(self, gen: layer.CommandGenerator[None]) -> layer.CommandGenerator[None]:
        """Relay `gen`'s commands (and the replies to blocking ones), but a protocol error for the
        client before a response head went out becomes the SPEC §6 answer (`_answer_error`)."""
        reply: Any = None
        while True:
            try:
                cmd = gen.send(reply)
            except StopIteration:
                return
            if isinstance(cmd, mhttp.SendHttp) and cmd.connection is self.context.client:
                ev = cmd.event
                if isinstance(ev, ResponseHeaders) and not 100 <= ev.response.status_code < 200:
                    self._head_sent = True
                elif (
                    isinstance(ev, ResponseProtocolError)
                    and not self._head_sent
                    and ev.code.http_status_code() is not None
                    and self.context.client.state & ConnectionState.CAN_WRITE
                ):
                    yield from self._answer_error(ev)
                    reply = None
                    continue
            reply = yield cmd

    def _answer_error(self, ev: ResponseProtocolError) -> layer.CommandGenerator[None]:
        """The JSON answer for a protocol error: the refusal this stream decided, else a fixed-phrase
        classification of the failure (`engine_error`); never the engine's message, which can hold
        request or upstream bytes. HTTP/1: the error event follows, so Http1Server closes the
        connection (the rest of the request body is never read); HTTP/2 and HTTP/3: the stream ends."""
        client = self.context.client
        status = ev.code.http_status_code()
        assert status is not None
        flow: http.HTTPFlow | None = getattr(self, "flow", None)
        cause = self._refusal or engine_error(status, ev.message)
        if self._refusal is None and flow is not None and ev.code in _UPSTREAM_FAILURES:
            cause = upstream_error(ev.message, f"{flow.request.host}:{flow.request.port}")
        resp = error_response(cause)
        h1 = not (client.alpn == b"h2" or mhttp.is_h3_alpn(client.alpn))  # as HttpLayer picks the server
        if h1:
            resp.headers["Connection"] = "close"
        self._head_sent = True
        yield mhttp.SendHttp(ResponseHeaders(self.stream_id, resp, end_stream=False), client)
        yield mhttp.SendHttp(ResponseData(self.stream_id, resp.raw_content or b""), client)
        yield mhttp.SendHttp(ev if h1 else ResponseEndOfMessage(self.stream_id), client)

    def state_consume_request_body(self, event: Any) -> layer.CommandGenerator[None]:
        whole = self.flow.metadata.get(BUFFER_WHOLE) if isinstance(event, RequestData) else None
        if not isinstance(whole, BufferWhole):
            yield from super().state_consume_request_body(event)
            return
        self.request_body_buf += event.data  # not check_body_size: it would switch to streaming
        if len(self.request_body_buf) > whole.limit:
            self.request_body_buf.clear()  # type: ignore[no-untyped-call]  # (h11 ReceiveBuffer)
            self._refusal = cause = whole.refuse()
            self.flow.error = mflow.Error(cause.message)
            self.flow.response = error_response(cause)  # for the audit record
            yield HttpErrorHook(self.flow)
            yield mhttp.SendHttp(
                ResponseProtocolError(self.stream_id, cause.message, ErrorCode.REQUEST_TOO_LARGE),
                self.context.client,
            )
            self.client_state = self.server_state = self.state_errored
            self.flow.live = False

    def state_stream_request_body(self, event: Any) -> layer.CommandGenerator[None]:
        try:
            yield from super().state_stream_request_body(event)
        except BodyOverLimit as e:
            yield from self._cut_request_body(e)

    def _cut_request_body(self, err: BodyOverLimit) -> layer.CommandGenerator[None]:
        """Reset the upstream request mid-body and answer 413 (mitmproxy's body_size_limit path)."""
        msg = "the request body is over the limit" if err.error is None else err.error.message
        self.flow.error = mflow.Error(msg)
        self._refusal = cause = err.error or BodyTooLarge(msg, limit_bytes=err.limit_bytes)
        if self.flow.response is None:  # for the audit record; the client's answer: `_answer_error`
            self.flow.response = error_response(cause)
        yield HttpErrorHook(self.flow)
        yield mhttp.SendHttp(
            RequestProtocolError(self.stream_id, msg, ErrorCode.REQUEST_TOO_LARGE), self.context.server
        )
        self.server_state = self.state_errored
        yield mhttp.SendHttp(
            ResponseProtocolError(self.stream_id, msg, ErrorCode.REQUEST_TOO_LARGE), self.context.client
        )
        self.client_state = self.state_errored
        self.flow.live = False

    def state_wait_for_request_headers(self, event: Any) -> layer.CommandGenerator[None]:
        req = event.request if isinstance(event, RequestHeaders) else None
        origin_form = req is not None and not req.host and req.method != "CONNECT"
        if req is not None and origin_form and self.mode is mhttp.HTTPMode.regular:
            # Origin-form to a forward proxy: mitmproxy would route it by its Host header. Without
            # one it answers 400 "destination unknown", which h1_error_response turns into bad_request.
            req.headers.pop("host", None)
        yield from super().state_wait_for_request_headers(event)
        if (
            req is not None
            and not event.end_stream
            and self.flow.response is not None
            and self.client_state == self.state_consume_request_body
        ):
            yield from self._answer_before_body()

    def _answer_before_body(self) -> layer.CommandGenerator[None]:
        """The addon refused the request at headers time: answer now, discard the body unread."""
        assert self.flow.response is not None
        if not (self.flow.request.is_http2 or self.flow.request.is_http3):
            self.flow.response.headers["Connection"] = "close"
        self.client_state = self.state_errored  # swallows the rest of the request body
        yield from self.send_response()
        yield mhttp.SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)

    def handle_protocol_error(
        self, event: RequestProtocolError | ResponseProtocolError
    ) -> layer.CommandGenerator[None]:
        if (
            isinstance(event, ResponseProtocolError)
            and event.code in _UPSTREAM_FAILURES
            and self.flow.response is None
            and self.client_state == self.state_done
            and self.server_state == self.state_wait_for_response_headers
        ):
            req = self.flow.request
            message = event.message
            if self._first_byte is not None and self._first_byte.timed_out:
                message = FIRST_BYTE_TIMED_OUT
            elif CONNECT_WATCH.cut_handshake(self.context.client.id):  # its TLS handshake hung
                message = CONNECT_TIMED_OUT
            self.flow.error = mflow.Error(message)
            self.flow.response = error_response(upstream_error(message, f"{req.host}:{req.port}"))
            yield from self.send_response()
            return
        yield from super().handle_protocol_error(event)


def _head_over_limit(buf: Any) -> bool:
    """True when the unparsed input holds no complete head within MAX_HEAD_BYTES. Cheap when the
    buffer is small (the usual case): only then is it copied and searched."""
    if len(buf) <= MAX_HEAD_BYTES:
        return False
    end = bytes(buf).find(b"\r\n\r\n")
    return end == -1 or end + 4 > MAX_HEAD_BYTES


def _capped_server_read_headers(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Server.read_headers with a head-size cap (mitmproxy buffers a head without limit: its
    own FIXME). Over the cap, before any parsing or hook: 431 JSON, then the connection is closed.
    Empty lines before a head are all skipped (`blank_lines`), as on the fast path."""

    def read_headers(self: Any, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and _head_over_limit(self.buf):
            self.buf.maybe_extract_at_most(len(self.buf))  # drop it: nothing of it is kept or echoed
            yield commands.SendData(self.conn, h1_error_response(431))
            yield commands.CloseConnection(self.conn)
            self.state = self.done
            _head_refused(self.conn, 431)
            return
        raw = bytes(self.buf) if isinstance(event, events.DataReceived) else b""
        if blank := blank_lines(raw):
            self.buf.maybe_extract_at_most(blank)
            raw = raw[blank:]
        answered = False
        for cmd in orig(self, event):  # read_headers yields no blocking command: nothing is sent back
            if isinstance(cmd, ReceiveHttp) and isinstance(cmd.event, RequestHeaders):
                end = strict.head_end(raw.lstrip(b"\r\n"))
                if not strict.request_head_ok(raw.lstrip(b"\r\n")[:end]):  # both paths: issue 24
                    self.buf.maybe_extract_at_most(len(self.buf))
                    yield commands.SendData(self.conn, h1_error_response(400, "malformed request head"))
                    yield commands.CloseConnection(self.conn)
                    self.state = self.done
                    _head_refused(self.conn, 400)
                    return
                # A head HttpStream refuses (400, after its hooks): no byte of the body is read first.
                # A broken body in the same read would close the connection before that 400 went out;
                # the fast path refuses at the head, whatever follows.
                if self.context.options.validate_inbound_headers and smuggling_prone(self.request):
                    yield cmd
                    self.state = self.done
                    return
            answered = answered or isinstance(cmd, commands.SendData)
            yield cmd
        if answered and self.request is None:  # an unparsable head: 400, no flow, no hook
            _head_refused(self.conn, 400)

    return read_headers


# Set by the audit (FlowLog): called with (client connection, status) when the engine refuses a request
# head before any flow exists, so the refusal is counted although no addon hook sees it.
on_head_refused: Callable[[Connection, int], None] | None = None


def _head_refused(conn: Connection, status: int) -> None:
    if on_head_refused is not None:
        on_head_refused(conn, status)


def _capped_client_read_headers(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Client.read_headers with the same cap for a hostile upstream's response head."""

    def read_headers(self: Any, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and self.stream_id and _head_over_limit(self.buf):
            self.buf.maybe_extract_at_most(len(self.buf))
            yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(
                ResponseProtocolError(
                    self.stream_id, "upstream response head over the limit", ErrorCode.GENERIC_SERVER_ERROR
                )
            )
            self.state = self.done
            return
        yield from orig(self, event)

    return read_headers


_WsConnection: Any = mws.WebsocketConnection  # mitmproxy's, as imported (before any install)
FRAME_COST = 256  # bytes a frame counts for against the message limit, besides its payload


class BoundedWebsocketConnection(_WsConnection):  # type: ignore[misc]
    """mitmproxy's WebSocket connection (one per side) that refuses a message growing past
    `max_message` bytes: instead of reassembling it further, it reports a close with 1009
    (message too big), which mitmproxy's layer relays to both peers before closing both
    connections. wsproto parses frames incrementally, so the reassembly buffer (`frame_buf`) is
    the only place a message accumulates; compression is never negotiated on intercepted
    WebSockets (`hygiene.strip_*_headers`), so no inflation happens before this check."""

    max_message = 32 << 20  # set_websocket_limit() sets --max-buffered-bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = 0

    def events(self) -> Iterator[wsproto.events.Event]:
        for ev in super().events():
            if isinstance(ev, wsproto.events.Message):
                data = ev.data
                size = len(data) if isinstance(data, bytes | bytearray) else len(data.encode())
                self._pending += size + FRAME_COST  # a frame's list entry costs too (empty frames included)
                if self._pending > self.max_message:
                    self.frame_buf = [b""]  # drop what was reassembled so far
                    self._pending = 0
                    yield wsproto.events.CloseConnection(code=1009, reason="message too big")
                    return
                if ev.message_finished:
                    self._pending = 0
            yield ev


def set_websocket_limit(max_message: int) -> None:
    """Messages over `max_message` bytes close an intercepted WebSocket with 1009."""
    BoundedWebsocketConnection.max_message = max_message


def _no_typecheck(self: http.MessageData) -> None:
    """mitmproxy re-checks every field type of every parsed message at runtime (5 % of the CPU of a
    keep-alive request; skipped under `python -O`). The values come from mitmproxy's own parser."""


_saved: tuple[Any, ...] | None = None


def install() -> None:
    """Use VaultHttpStream, the JSON error page and no runtime model type checks in this process
    (idempotent)."""
    global _saved
    if _saved is None:
        engine_compat.require_compatible()
        post_init = http.MessageData.__dict__.get("__post_init__")
        server_rh, client_rh = _http1.Http1Server.read_headers, _http1.Http1Client.read_headers
        _saved = (mhttp.HttpStream, _http1.make_error_response, post_init, server_rh, client_rh)
        _saved += (_WsConnection, _http1.make_body_reader)
        setattr(mhttp, "HttpStream", VaultHttpStream)  # noqa: B010 - HttpLayer.make_stream reads it
        setattr(_http1, "make_error_response", h1_error_response)  # noqa: B010 - Http1Server reads it
        setattr(http.MessageData, "__post_init__", _no_typecheck)  # noqa: B010 - dataclass __init__ calls it
        setattr(_http1.Http1Server, "read_headers", _capped_server_read_headers(server_rh))  # noqa: B010
        setattr(_http1.Http1Client, "read_headers", _capped_client_read_headers(client_rh))  # noqa: B010
        setattr(mws, "WebsocketConnection", BoundedWebsocketConnection)  # noqa: B010 - WebsocketLayer reads it
        setattr(_http1, "make_body_reader", capped_body_reader)  # noqa: B010 - Http1Server/Client read it
        h1bounds.install()
        h2bounds.install()  # HTTP/2 send queues and finished streams (hostile peers)


def uninstall() -> None:
    global _saved
    if _saved is not None:
        setattr(mhttp, "HttpStream", _saved[0])  # noqa: B010
        setattr(_http1, "make_error_response", _saved[1])  # noqa: B010
        if _saved[2] is not None:
            setattr(http.MessageData, "__post_init__", _saved[2])  # noqa: B010
        setattr(_http1.Http1Server, "read_headers", _saved[3])  # noqa: B010
        setattr(_http1.Http1Client, "read_headers", _saved[4])  # noqa: B010
        setattr(mws, "WebsocketConnection", _saved[5])  # noqa: B010
        setattr(_http1, "make_body_reader", _saved[6])  # noqa: B010
        h2bounds.uninstall()
        h1bounds.uninstall()
        _saved = None
