"""HTTP/1.1 messages on a fast-path connection, read exactly as the engine reads them.

Parity first: heads are split by the engine's own buffer (h11 `ReceiveBuffer.maybe_extract_lines`)
and parsed by the engine's own functions (`http1.read_request_head` / `read_response_head`,
`expected_http_body_size`), bodies framed by the engine's own readers (`make_body_reader`), so the
two paths can never frame a message differently. On top, every request head must pass llhttp
(`strict`, which the engine applies too): what it refuses is refused (400) on both paths. A head
over `MAX_HEAD_BYTES` is 431, as on the engine. Buffers hold at most one read beyond what the caller
consumed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.net.http import http1

from agent_vault.proxy.bodyreader import make_body_reader
from agent_vault.proxy.engine import _head_over_limit
from agent_vault.proxy.engine_compat import _http1
from agent_vault.proxy.fast import strict
from agent_vault.proxy.fast.headers import IndexedHeaders

# h11 as the engine imports it (mitmproxy's HTTP/1 layer): the same buffer and body readers
_engine_h1: Any = _http1
h11: Any = _engine_h1.h11
ReceiveBuffer: Any = _engine_h1.ReceiveBuffer

_h1: Any = http1  # mitmproxy's HTTP/1 functions are untyped


def request_head_bytes(req: http.Request) -> bytes:
    return bytes(_h1.assemble_request_head(req))


def response_head_bytes(resp: http.Response) -> bytes:
    return bytes(_h1.assemble_response_head(resp))


def response_bytes(resp: http.Response) -> bytes:
    return bytes(_h1.assemble_response(resp))


def connection_close(msg: http.Message) -> bool:
    """mitmproxy's rule: `Connection: close`, or HTTP/1.0 without keep-alive."""
    return bool(_h1.connection_close(msg.http_version, msg.headers))


def body_size(req: http.Request, resp: http.Response) -> int | None:
    return _h1.expected_http_body_size(req, resp)  # type: ignore[no-any-return]


class Source(Protocol):
    async def read(self) -> bytes: ...


class HeadRefused(Exception):
    """A head the engine (or llhttp) refuses: answer `status` and close. The message names the cause."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyBroken(Exception):
    """The peer broke the body framing (bad chunk size, early end): close, nothing more relayed."""


class Reader:
    """Heads and bodies from one side of the connection (see the module docstring)."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.buf = ReceiveBuffer()
        self.eof = False

    async def _more(self) -> bool:
        if self.eof:
            return False
        data = await self.src.read()
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def head_lines(self) -> tuple[list[bytes], bytes] | None:
        """The next head as (lines, raw bytes), or None at end of stream before a complete head."""
        while True:
            if _head_over_limit(self.buf):
                self.buf.maybe_extract_at_most(len(self.buf))
                raise HeadRefused(431, "the HTTP head is over the limit")
            if len(self.buf):
                raw = bytes(self.buf)
                lines = self.buf.maybe_extract_lines()
                if lines:
                    consumed = len(raw) - len(self.buf)
                    return [bytes(x) for x in lines], raw[:consumed]
                if lines is not None:
                    continue  # empty lines before a head are skipped
            if not await self._more():
                return None

    async def request_head(self) -> tuple[http.Request, int | None] | None:
        """The next request and its expected body size (None: chunked, -1: until close)."""
        got = await self.head_lines()
        if got is None:
            return None
        lines, raw = got
        try:
            req = http1.read_request_head(lines)
            req.data.headers = IndexedHeaders.adopt(req.data.headers)
            size = http1.expected_http_body_size(req)
        except ValueError as e:
            raise HeadRefused(400, str(e)) from None
        if not strict.request_head_ok(raw):
            raise HeadRefused(400, "the HTTP request head is malformed")
        return req, size

    async def response_head(self, req: http.Request) -> tuple[http.Response, int | None] | None:
        """The upstream's response head (1xx heads are returned too) and its expected body size."""
        got = await self.head_lines()
        if got is None:
            return None
        lines, _raw = got
        try:
            resp = http1.read_response_head(lines)
            resp.data.headers = IndexedHeaders.adopt(resp.data.headers)
            size = http1.expected_http_body_size(req, resp)
        except ValueError as e:
            raise HeadRefused(502, f"Cannot parse HTTP response: {type(e).__name__}") from None
        return resp, size

    def whole(self, size: int | None) -> bytes | None:
        """The whole body at once when its length is known and it is all in the buffer (no waiting,
        no framing left to check), else None: what `body` would yield, without an async generator
        (each one costs the event loop a hook and a weak reference)."""
        if size == 0:
            return b""
        if size is not None and 0 < size <= len(self.buf):
            return bytes(self.buf.maybe_extract_at_most(size))
        return None

    async def body(self, size: int | None) -> AsyncIterator[bytes]:
        """The body's chunks (de-chunked), framed by the engine's reader; BodyBroken on a framing error."""
        whole = self.whole(size)  # all here (or empty): what the length reader would take
        if whole is not None:
            if whole:
                yield whole
            return
        reader = make_body_reader(size)
        while True:
            try:
                ev = reader(self.buf)
                if ev is None and not await self._more():
                    ev = reader.read_eof()
            except h11.ProtocolError as e:
                raise BodyBroken(f"HTTP/1 protocol error: {type(e).__name__}") from None
            if ev is None:
                continue
            if isinstance(ev, h11.Data):
                if ev.data:
                    yield bytes(ev.data)
            else:  # EndOfMessage (trailers are not relayed over HTTP/1, as on the engine)
                return
