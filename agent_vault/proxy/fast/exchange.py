"""One request/response on a fast-path connection, through the product addon's own hooks.

The engine's order is kept step for step (mitmproxy `HttpStream`): `requestheaders` (decision,
limits, injection, hygiene), `100 Continue`, the body (buffered up to the engine's 1 MiB streaming
threshold, or whole up to its limit when the request phase marks it `BufferWhole`, else streamed
through the addon's stream callables), `request`, the upstream exchange,
`responseheaders` (hygiene, redaction, streaming choice), the body, `response` (redaction of a
buffered body, the audit record). Messages are built and framed by mitmproxy's HTTP/1 functions.

`run()` returns True to keep the connection, False to close it. Anything unexpected propagates to
the session, which answers 502 `internal` when nothing of the response has been sent, and closes.
Danger: the flow carries injected values between `requestheaders` and `response`/`error`, where the
addon scrubs them; nothing here logs or keeps the flow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.net.http.validate import validate_headers

from agent_vault.errors import BadRequest, BodyTooLarge
from agent_vault.proxy.addon import VaultAddon
from agent_vault.proxy.answers import error_response, h1_error_response, upstream_error
from agent_vault.proxy.deadlines import FIRST_BYTE_TIMED_OUT, Deadlines
from agent_vault.proxy.engine import BUFFER_WHOLE, BodyOverLimit, BufferWhole
from agent_vault.proxy.fast.h1 import (
    BodyBroken,
    HeadRefused,
    Reader,
    body_size,
    connection_close,
    request_head_bytes,
    response_bytes,
    response_head_bytes,
)
from agent_vault.proxy.fast.upstream import Upstream, UpstreamFailed
from agent_vault.proxy.flowlog import FlowState

STREAM_LARGE = 1 << 20  # the engine's `stream_large_bodies`
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # safe to send twice


class Side(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class Abort(Exception):
    """The exchange cannot go on after bytes were sent (killed flow, broken body): close at once."""


def _chunked(msg: http.Message) -> bool:
    return "chunked" in msg.headers.get("transfer-encoding", "").lower()


def _frame(data: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked and data else data


def _pieces(stream: Any, chunk: bytes) -> list[bytes]:
    """Apply a mitmproxy stream setting (True or a callable) to a chunk, as the engine does."""
    if not callable(stream):
        return [chunk] if chunk else []
    out = stream(chunk)
    return [out] if isinstance(out, bytes) else list(out)


async def _collect(reader: Reader, size: int | None, limit: int, over: Callable[[], Exception]) -> bytes:
    """A body read whole, at most `limit` bytes (else `over()` is raised); taken from the buffer at once
    when it is all there (`Reader.whole`: no async generator), else from `Reader.body`."""
    whole = reader.whole(size)
    if whole is not None:
        if len(whole) > limit:
            raise over()
        return whole
    parts: list[bytes] = []
    total = 0
    async for chunk in reader.body(size):
        total += len(chunk)
        if total > limit:
            raise over()
        parts.append(chunk)
    return b"".join(parts)


async def _first_head(up: Upstream, req: http.Request) -> tuple[http.Response, int | None] | None:
    """The response head, within the first-byte deadline (SPEC §6 upstream_timeout; the request is
    sent whole by now): past it the upstream connection is cut and UpstreamFailed says it timed out."""
    try:
        async with asyncio.timeout(Deadlines.first_byte):
            return await up.h1.response_head(req)
    except TimeoutError:
        up.close()
        raise UpstreamFailed(FIRST_BYTE_TIMED_OUT) from None


def _killed(flow: http.HTTPFlow) -> bool:
    return flow.error is not None and flow.error.msg == mflow.Error.KILLED_MESSAGE


def mark_fast(addon: VaultAddon, flow: http.HTTPFlow) -> FlowState | None:
    """Note on the request's state that the fast path serves it (audit `served_by`, metrics)."""
    fs = addon.flows.get(flow.id)
    if fs is not None:
        fs.served = "fast"
    return fs


class Exchange:
    """One request on the connection (see the module docstring)."""

    def __init__(
        self,
        addon: VaultAddon,
        flow: http.HTTPFlow,
        size: int | None,
        client: Side,
        creader: Reader,
        upstream: Callable[[], Any],
    ) -> None:
        self.addon, self.flow, self.size = addon, flow, size
        self.client, self.creader, self._upstream = client, creader, upstream
        self.sent = False  # response bytes went to the client: an error can only close
        self.body_read = size == 0

    async def run(self) -> bool:
        flow, req = self.flow, self.flow.request
        if self.size is not None and self.size > STREAM_LARGE:
            req.stream = True  # the engine's check_body_size, before the hook
        await self.addon.requestheaders(flow)
        fs = mark_fast(self.addon, flow)
        if flow.response is None and fs is not None and "upgrade" in req.headers:
            # a WebSocket handshake (hygiene dropped other upgrades): refused, never half-handled
            err = BadRequest(
                "WebSocket upgrades are not served on a fast-path connection",
                hint="Use a client that offers no ALPN for WebSockets, or --fast-path off.",
            )
            self.addon._reject(flow, fs, err)
        if flow.response is not None:  # refused at headers: answer, the upstream is never contacted
            if not self.body_read:
                flow.response.headers["Connection"] = "close"
            return await self._answer()
        if req.headers.get("expect", "").lower() == "100-continue":
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            req.headers.pop("expect")
        if req.stream and not self.body_read:
            up = await self._connect()
            if up is None:
                return False
            if not await self._stream_request(up):
                return False
        else:
            await self._buffer_request()
            self.addon.request(flow)
            if flow.response is not None:
                return await self._answer()
            up = await self._connect()
            if up is None:
                return False
            self._send_buffered(up)
            return await self._response(up, self._send_buffered)
        return await self._response(up, None)

    def _send_buffered(self, up: Upstream) -> None:
        req = self.flow.request
        up.write(request_head_bytes(req))
        if req.raw_content:
            up.write(_frame(req.raw_content, _chunked(req)))
        if _chunked(req):
            up.write(b"0\r\n\r\n")

    # ---- request --------------------------------------------------------------------------------
    async def _buffer_request(self) -> None:
        whole = self.flow.metadata.get(BUFFER_WHOLE)
        limit = max(STREAM_LARGE, self.addon.core.settings.max_buffered_bytes)
        if isinstance(whole, BufferWhole):  # read whole up to its limit (the engine's BufferWhole)
            limit = whole.limit

        def over() -> Exception:
            if isinstance(whole, BufferWhole):
                return whole.refuse()  # the session answers it (413, connection closed)
            return BodyTooLarge("the request body is over the limit", limit_bytes=limit)

        self.flow.request.raw_content = await _collect(self.creader, self.size, limit, over)
        self.body_read = True

    async def _stream_request(self, up: Upstream) -> bool:
        flow, req = self.flow, self.flow.request
        up.write(request_head_bytes(req))
        chunked, stream = _chunked(req), req.stream
        try:
            async for chunk in self.creader.body(self.size):
                for piece in _pieces(stream, chunk):
                    up.write(_frame(piece, chunked))
                await up.drain()
            for piece in _pieces(stream, b""):
                up.write(_frame(piece, chunked))
        except BodyOverLimit as e:  # the engine's _cut_request_body: 413, upstream reset
            up.close()
            msg = "the request body is over the limit" if e.error is None else e.error.message
            flow.error = mflow.Error(msg)
            cause = e.error or BodyTooLarge(msg, limit_bytes=e.limit_bytes)
            if flow.response is None:
                flow.response = error_response(cause)
            self.addon.error(flow)
            answer = error_response(cause)  # as the engine's _answer_error: the refusal itself
            answer.headers["Connection"] = "close"
            self.client.write(response_bytes(answer))
            return False
        except UpstreamFailed as e:  # the upstream went away mid-upload: 502, as the engine answers
            up.close()
            await self._upstream_failed(str(e))
            return False
        self.body_read = True
        if chunked:
            up.write(b"0\r\n\r\n")
        await up.drain()
        self.addon.request(flow)
        if flow.response is not None:  # a refusal after the body streamed: the upstream is cut
            up.close()
            await self._answer()
            return False
        return True

    async def _connect(self) -> Upstream | None:
        try:
            up: Upstream = await self._upstream()
            return up
        except UpstreamFailed as e:
            await self._upstream_failed(str(e))
            return None

    async def _upstream_failed(self, message: str) -> bool:
        """The engine's VaultHttpStream answer to a failure before response headers: a 502 JSON."""
        flow, req = self.flow, self.flow.request
        flow.error = mflow.Error(message)
        flow.response = error_response(upstream_error(message, f"{req.host}:{req.port}"))
        flow.response.headers["Connection"] = "close"
        await self._answer()
        return False

    # ---- response -------------------------------------------------------------------------------
    async def _answer(self) -> bool:
        """Send a response the proxy set itself (refusal or failure) after the `response` hook."""
        flow = self.flow
        self.addon.response_checked(flow)
        resp = flow.response
        assert resp is not None
        self.sent = True
        self.client.write(response_bytes(resp))
        self.addon._finish(flow)  # audited right after the write: no await in between
        await self.client.drain()
        return self.body_read and not (connection_close(flow.request) or connection_close(resp))  # mark_done

    async def _response(self, up: Upstream, resend: Callable[[Upstream], None] | None) -> bool:
        """Read and relay the response. A reused upstream connection that closes before answering a
        buffered request (the upstream hung up while idle) gets the request once more on a new one,
        for idempotent methods only (RFC 9110 §9.2.2: a POST may have been processed)."""
        flow, req = self.flow, self.flow.request
        try:
            got = await _first_head(up, req)
            if got is None and resend is not None and up.served and req.method.upper() in _IDEMPOTENT:
                up.close()
                up = await self._upstream()
                resend(up)
                got = await _first_head(up, req)
        except HeadRefused as e:
            return await self._upstream_failed(str(e) if e.status == 502 else "head over the limit")
        except UpstreamFailed as e:
            return await self._upstream_failed(str(e))
        if got is None:
            return await self._upstream_failed("server closed connection before answering")
        ureader = up.h1
        resp, rsize = got
        try:
            validate_headers(resp)  # the engine's check_invalid(False): smuggling-prone answers
        except ValueError as e:
            up.close()
            flow.error = mflow.Error(f"Received {e} from server, refusing to prevent request smuggling")
            self.addon.error(flow)
            self.client.write(h1_error_response(502, flow.error.msg))
            self.sent = True
            return False
        if connection_close(resp):  # before hygiene strips it
            up.reusable = False
        flow.response = resp
        if rsize is not None and rsize > STREAM_LARGE:
            resp.stream = True
        self.addon.responseheaders(flow)
        if _killed(flow):
            raise Abort("killed at response headers")
        chunked = _chunked(resp) and req.method.upper() != "HEAD"
        fs = self.addon.flows.get(flow.id)
        try:
            if resp.stream:
                self.sent = True
                self.client.write(response_head_bytes(resp))
                stream = resp.stream
                async for chunk in ureader.body(rsize):
                    for piece in _pieces(stream, chunk):
                        self.client.write(_frame(piece, chunked))
                    if fs is not None and fs.error is not None:
                        break  # the filter failed (decoding cap): `response` resets the stream
                    await self.client.drain()
                else:
                    for piece in _pieces(stream, b""):
                        self.client.write(_frame(piece, chunked))
                self.addon.response(flow)
                if _killed(flow):
                    raise Abort("stream failed")
            else:
                await self._buffer_response(ureader, rsize)
                self.addon.response_checked(flow)
                if _killed(flow):
                    raise Abort("killed at response")
                resp = flow.response
                assert resp is not None
                chunked = _chunked(resp) and req.method.upper() != "HEAD"
                self.sent = True
                body = _frame(resp.raw_content, chunked) if resp.raw_content else b""
                end = b"0\r\n\r\n" if chunked else b""
                self.client.write(b"".join((response_head_bytes(resp), body, end)))  # one TLS record
                self.addon._finish(flow)  # audited right after the write: no await in between
                chunked = False  # the end is sent
        except (BodyBroken, UpstreamFailed):
            flow.error = mflow.Error("Server connection error: the body was cut")
            self.addon.error(flow)
            raise Abort("upstream body broken") from None
        if chunked:
            self.client.write(b"0\r\n\r\n")
        await self.client.drain()
        return self._keep(up, rsize)

    async def _buffer_response(self, ureader: Reader, rsize: int | None) -> None:
        """Read a body the engine would buffer (<= 1 MiB by length, or bounded by the decoding cap)."""
        resp = self.flow.response
        assert resp is not None
        limit = max(STREAM_LARGE, self.addon.core.settings.max_buffered_bytes)

        def over() -> Exception:
            return UpstreamFailed("Server connection error: the response body is over the limit")

        resp.raw_content = await _collect(ureader, rsize, limit, over)

    def _keep(self, up: Upstream, rsize: int | None) -> bool:
        """mitmproxy's Http1Connection.mark_done, for both sides: keep the connections alive?"""
        req, resp = self.flow.request, self.flow.response
        assert resp is not None
        try:
            until_eof = body_size(req, resp) == -1
        except ValueError:
            until_eof = False
        done = until_eof or connection_close(req) or connection_close(resp)
        up.served += 1
        if done or rsize == -1 or not up.reusable:
            up.close()
        return not done
