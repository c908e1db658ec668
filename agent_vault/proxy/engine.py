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
  body) and the client gets 413 `body_too_large`;
* replaces the HTTP/1 error page used for the remaining early errors (bad request line, ...);
* drops mitmproxy's runtime type check of every parsed HTTP message (a debug aid, costly).

`TunnelLayer` is mitmproxy's raw TCP relay without a flow (no per-chunk hooks, nothing stored) that
counts the bytes it relays, for the tunnel's audit record; `splice_tunnel` then takes the relay of an
established tunnel off the layer stack.

Messages name hosts and causes, never request content: a bad request line may hold a token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.connection import Connection
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import TCPLayer
from mitmproxy.proxy.layers import http as mhttp

from agent_vault.errors import (
    AgentVaultError,
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    ProxyAuthRequired,
    ProxyInternal,
    RateLimited,
    UpstreamDns,
    UpstreamTimeout,
    UpstreamTls,
    UpstreamUnreachable,
)
from agent_vault.proxy import engine_compat
from agent_vault.proxy.engine_compat import (
    ErrorCode,
    HttpErrorHook,
    ReceiveHttp,
    RequestHeaders,
    RequestProtocolError,
    ResponseEndOfMessage,
    ResponseProtocolError,
    _http1,
)

PROXY_ERROR_HEADER = "X-Agent-Vault-Proxy-Error"
ORIGIN_FORM_HINT = "Use this address as HTTPS_PROXY / HTTP_PROXY; do not send requests to it directly."
_UPSTREAM_FAILURES = (ErrorCode.CONNECT_FAILED, ErrorCode.GENERIC_SERVER_ERROR)
MAX_HEAD_BYTES = 64 << 10  # request line + headers from a client, status line + headers from an upstream


def error_response(err: AgentVaultError) -> http.Response:
    """The SPEC §6 response for `err`: JSON body, `X-Agent-Vault-Proxy-Error: true`, extra headers."""
    headers = {"Content-Type": "application/json", PROXY_ERROR_HEADER: "true"}
    if isinstance(err, ProxyAuthRequired):
        headers["Proxy-Authenticate"] = 'Basic realm="agent-vault"'
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.extra.get("retry_after", 1))
    return http.Response.make(err.status, json.dumps(err.body()).encode(), headers)


def is_proxy_answer(resp: http.Response | None) -> bool:
    """True for a response this proxy generated (upstream `X-Agent-Vault-*` headers are stripped)."""
    return resp is not None and resp.headers.get(PROXY_ERROR_HEADER) == "true"


# (words in the engine's message, the cause we report). The engine builds some messages from raw
# upstream or request bytes (`Cannot parse HTTP response: Bad HTTP response line: b'...'`), which can
# hold an injected value: a cause is therefore always one of these fixed phrases, never a copy.
_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("timed out", "timeout"), "timed out"),
    (("refused",), "connection refused"),
    (("reset",), "connection reset"),
    (("name or service", "getaddrinfo", "nodename", "no address associated"), "name does not resolve"),
    (("no route",), "no route to host"),
    (("unreachable",), "network unreachable"),
    (("cannot parse http response", "unexpected server response"), "malformed response from the upstream"),
    (("server closed connection",), "the upstream closed the connection before answering"),
    (("head over the limit",), "the upstream's response head is over the proxy's limit"),
    (("hostname mismatch",), "certificate verify failed: hostname mismatch"),
)
_TLS_WORDS = ("certificate", "tls", "ssl", "handshake")
_VERIFY_REASON = re.compile(r"certificate verify failed: ([a-z][a-z ,-]{0,79})")


def _cause(low: str) -> str:
    """A fixed phrase for an engine message (lowercased); OpenSSL's verify reason only when it is
    plain words (`self-signed certificate`, `unable to get local issuer certificate`)."""
    m = _VERIFY_REASON.search(low)
    if m:
        return "certificate verify failed: " + m.group(1).strip(" ,-")
    for words, cause in _CAUSES:
        if any(w in low for w in words):
            return cause
    if any(w in low for w in _TLS_WORDS):
        return "TLS handshake failed"
    return "connection failed"


def upstream_error(message: str, target: str = "the upstream") -> AgentVaultError:
    """Classify an engine connection error message into the SPEC §6 upstream_* error. The message
    is never copied into the answer (see `_CAUSES`)."""
    low = message.lower()
    cause = _cause(low)
    if cause.startswith("certificate") or (
        any(w in low for w in _TLS_WORDS) and cause in ("TLS handshake failed", "connection failed")
    ):
        return UpstreamTls(f"TLS to {target} failed", cause=cause)
    if cause == "timed out":
        return UpstreamTimeout(f"{target} did not answer in time", cause=cause)
    if cause == "name does not resolve":
        return UpstreamDns(f"{target} does not resolve", cause=cause)
    return UpstreamUnreachable(f"cannot reach {target}", cause=cause)


def _engine_error(status: int, message: str) -> AgentVaultError:
    if status == 400 and "destination unknown" in message:
        return BadRequest(
            "this is a forward proxy: send absolute-form or CONNECT requests", hint=ORIGIN_FORM_HINT
        )
    if status == 400:
        return BadRequest("the request could not be parsed", hint="Send a well-formed HTTP proxy request.")
    if status == 413:
        return BodyTooLarge("the body is over the proxy's limit")
    if status == 431:
        return HeadersTooLarge(
            "the request line and headers are over the proxy's limit", limit_bytes=MAX_HEAD_BYTES
        )
    if status in (502, 504):
        return upstream_error(message)
    return ProxyInternal("the proxy could not handle the request")


def _h1_error_response(status_code: int, message: str = "") -> bytes:
    """Replacement for mitmproxy's HTML error page on HTTP/1 connections."""
    resp = error_response(_engine_error(status_code, message))
    resp.headers["Connection"] = "close"
    return bytes(http1.assemble_response(resp))  # type: ignore[no-untyped-call]


class BodyOverLimit(Exception):
    """Raised by a request `stream` callable when a body of unknown length crosses `limit_bytes`."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(limit_bytes)
        self.limit_bytes = limit_bytes


class VaultHttpStream(mhttp.HttpStream):
    """mitmproxy's HttpStream with SPEC §5.1/§6 answers (see the module docstring)."""

    def state_stream_request_body(self, event: Any) -> layer.CommandGenerator[None]:
        try:
            yield from super().state_stream_request_body(event)
        except BodyOverLimit as e:
            yield from self._cut_request_body(e)

    def _cut_request_body(self, err: BodyOverLimit) -> layer.CommandGenerator[None]:
        """Reset the upstream request mid-body and answer 413 (mitmproxy's body_size_limit path)."""
        msg = "the request body is over the limit"
        self.flow.error = mflow.Error(msg)
        if self.flow.response is None:  # for the audit record; the client gets the 413 page below
            self.flow.response = error_response(BodyTooLarge(msg, limit_bytes=err.limit_bytes))
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
            # one it answers 400 "destination unknown", which _h1_error_response turns into bad_request.
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
            self.flow.error = mflow.Error(event.message)
            self.flow.response = error_response(upstream_error(event.message, f"{req.host}:{req.port}"))
            yield from self.send_response()
            return
        yield from super().handle_protocol_error(event)


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


def _head_over_limit(buf: Any) -> bool:
    """True when the unparsed input holds no complete head within MAX_HEAD_BYTES. Cheap when the
    buffer is small (the usual case): only then is it copied and searched."""
    if len(buf) <= MAX_HEAD_BYTES:
        return False
    end = bytes(buf).find(b"\r\n\r\n")
    return end == -1 or end + 4 > MAX_HEAD_BYTES


def _capped_server_read_headers(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Http1Server.read_headers with a head-size cap (mitmproxy buffers a head without limit: its
    own FIXME). Over the cap, before any parsing or hook: 431 JSON, then the connection is closed."""

    def read_headers(self: Any, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and _head_over_limit(self.buf):
            self.buf.maybe_extract_at_most(len(self.buf))  # drop it: nothing of it is kept or echoed
            yield commands.SendData(self.conn, _h1_error_response(431))
            yield commands.CloseConnection(self.conn)
            self.state = self.done
            _head_refused(self.conn, 431)
            return
        answered = False
        for cmd in orig(self, event):  # read_headers yields no blocking command: nothing is sent back
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
        setattr(mhttp, "HttpStream", VaultHttpStream)  # noqa: B010 - HttpLayer.make_stream reads it
        setattr(_http1, "make_error_response", _h1_error_response)  # noqa: B010 - Http1Server reads it
        setattr(http.MessageData, "__post_init__", _no_typecheck)  # noqa: B010 - dataclass __init__ calls it
        setattr(_http1.Http1Server, "read_headers", _capped_server_read_headers(server_rh))  # noqa: B010
        setattr(_http1.Http1Client, "read_headers", _capped_client_read_headers(client_rh))  # noqa: B010


def uninstall() -> None:
    global _saved
    if _saved is not None:
        setattr(mhttp, "HttpStream", _saved[0])  # noqa: B010
        setattr(_http1, "make_error_response", _saved[1])  # noqa: B010
        if _saved[2] is not None:
            setattr(http.MessageData, "__post_init__", _saved[2])  # noqa: B010
        setattr(_http1.Http1Server, "read_headers", _saved[3])  # noqa: B010
        setattr(_http1.Http1Client, "read_headers", _saved[4])  # noqa: B010
        _saved = None
