"""Loopback-only upstream servers for tests: the "real internet" behind the proxy.

Every server binds 127.0.0.1 on an ephemeral port, runs its own asyncio loop in one background thread, and is
a context manager that shuts down cleanly (connections cancelled, port released, thread joined, temp files
removed).

* `TLSUpstream` - HTTPS; HTTP/1.1 and HTTP/2 (ALPN `h2`, `http/1.1`); WebSocket echo on `/ws` (HTTP/1.1
  upgrade, same port).
* `PlainUpstream` - the same endpoints over plain HTTP/1.1.
* `GitHttpUpstream` - a `TLSUpstream` that serves bare git repositories through `git http-backend` behind HTTP
  basic auth (`make_bare_repo` builds a repository to serve; `git_env` gives git a clean environment).

Endpoints of `TLSUpstream`/`PlainUpstream` (query parameters in brackets):

* `/echo...` any method - 200 JSON `{method, path, query, headers, header_list, body, body_length,
  http_version, authority, scheme}`; `headers` maps lowercased names to values (repeats joined by ", ").
* `/reflect?header=NAME[&gzip=1][&chunk=K&delay=S]` - the request header's value as the text body and as the
  response header `X-Reflected` (empty when absent). `gzip=1` gzips the body (`Content-Encoding: gzip`);
  `chunk=K` streams the body in K-byte pieces without a length, sleeping `delay` seconds between pieces.
* `/sse?n=3&delay=0.5[&reflect=NAME]` - `text/event-stream`, no length, event i is
  `id: i\\nevent: message\\ndata: {"i": i[, "reflected": value]}\\n\\n`; the first event is sent at once,
  then one every `delay` seconds.
* `/download?bytes=N[&chunked=1]` - N bytes of `download_payload(N)`, with `Content-Length` unless
  `chunked=1`.
* `/redirect?to=URL[&status=302]` - redirect to URL.
* `/set-cookie` - 200 JSON with `Set-Cookie: session=abc`.
* `/status/NNN` - that status with JSON `{"status": NNN}` (no body for 204/304).
* `/delay?seconds=S` - waits S seconds, then 200 JSON `{"delayed": S}`.
* `/trailer?header=NAME` - 200 text `ok`, and over HTTP/2 the request header's value in the response
  trailer `X-Reflected` (HTTP/1.1 answers carry no trailers).
* `/ws` - WebSocket (HTTP/1.1 upgrade on the same port). The first server message is a JSON text
  `{"path", "headers", "header_list"}` describing the upgrade request; then every text/binary message is
  echoed with the same type.
* anything else - 404 JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11
import trustme
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

__all__ = [
    "DEFAULT_HOSTNAMES",
    "LOOPBACK",
    "GitHttpUpstream",
    "PlainUpstream",
    "RequestLog",
    "TLSUpstream",
    "UpstreamRequest",
    "UpstreamResponse",
    "default_routes",
    "download_payload",
    "git_env",
    "make_bare_repo",
]

LOOPBACK = "127.0.0.1"
DEFAULT_HOSTNAMES: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "upstream.test",
    "api.upstream.test",
    "other.upstream.test",
    "*.upstream.test",
)
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_READ_SIZE = 65536
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}
)
_PATTERN = bytes(range(251)) * (_READ_SIZE // 251 + 2)


def download_payload(n: int, offset: int = 0) -> bytes:
    """The deterministic bytes `/download?bytes=...` serves (byte i is `i % 251`)."""
    out = bytearray()
    while len(out) < n:
        start = (offset + len(out)) % 251
        take = min(n - len(out), _READ_SIZE)
        out += _PATTERN[start : start + take]
    return bytes(out)


# ----------------------------------------------------------------------------------------------------
# Request / response model
# ----------------------------------------------------------------------------------------------------


class RequestLog(list[dict[str, Any]]):
    """Thread-safe list of received requests (one dict per request, appended by the server thread).

    Each dict has `method`, `path` (request target incl. query), `headers` (list of (name, value) pairs as
    sent, pseudo-headers excluded), `body` (bytes), `http_version` ("HTTP/1.1", "HTTP/1.0" or "HTTP/2"), plus
    `authority` (Host / :authority) and `scheme`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def append(self, item: dict[str, Any]) -> None:
        with self._cond:
            super().append(item)
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            super().clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least `count` requests were seen; returns a snapshot. Raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self) >= count, timeout):
                raise TimeoutError(f"upstream saw {len(self)} request(s), expected at least {count}")
            return list(self)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.snapshot()]


@dataclass
class UpstreamRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str
    scheme: str
    authority: str
    trailers: list[tuple[str, str]] = field(default_factory=list)  # HTTP/2 request trailers

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.query, keep_blank_values=True).items()}

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.headers:
            key = k.lower()
            out[key] = f"{out[key]}, {v}" if key in out else v
        return out

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.target,
            "headers": list(self.headers),
            "body": self.body,
            "http_version": self.http_version,
            "authority": self.authority,
            "scheme": self.scheme,
            "trailers": list(self.trailers),
        }


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes] = b""
    trailers: list[tuple[str, str]] | None = None  # sent after the body over HTTP/2 only
    reason: str = ""  # the HTTP/1 reason phrase (h11's default: none)


def _json_response(status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> UpstreamResponse:
    return UpstreamResponse(
        status, [("Content-Type", "application/json"), *headers], json.dumps(obj).encode() + b"\n"
    )


def _has_header(headers: Iterable[tuple[str, str]], name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


def _implicit_length(resp: UpstreamResponse) -> int | None:
    """A bytes body without an explicit Content-Length gets one (so only iterator bodies are chunked)."""
    if (
        isinstance(resp.body, bytes)
        and not _has_header(resp.headers, "content-length")
        and resp.status >= 200
        and resp.status not in (204, 304)
    ):
        return len(resp.body)
    return None


def _no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


async def _iterate(body: bytes | AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the body's chunks; always closes an async generator body (kills CGI children etc.)."""
    if isinstance(body, bytes):
        if body:
            yield body
        return
    try:
        async for chunk in body:
            if chunk:
                yield chunk
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


async def _discard(body: bytes | AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


def _float(params: dict[str, str], name: str, default: float) -> float:
    try:
        return float(params.get(name, default))
    except ValueError:
        return default


def _int(params: dict[str, str], name: str, default: int) -> int:
    try:
        return int(params.get(name, default))
    except ValueError:
        return default


async def default_routes(req: UpstreamRequest) -> UpstreamResponse:
    """The endpoints shared by `TLSUpstream` and `PlainUpstream` (see the module docstring)."""
    path, params = req.path, req.params
    if path.startswith("/echo"):
        return _json_response(
            200,
            {
                "method": req.method,
                "path": path,
                "query": req.query,
                "headers": req.header_dict(),
                "header_list": [[k, v] for k, v in req.headers],
                "body": req.body.decode("utf-8", "replace"),
                "body_length": len(req.body),
                "http_version": req.http_version,
                "authority": req.authority,
                "scheme": req.scheme,
            },
        )
    if path == "/reflect":
        name = params.get("header")
        if not name:
            return _json_response(400, {"error": "missing ?header=NAME"})
        value = req.header(name) or ""
        raw = value.encode("latin-1", "replace")
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Reflected", value)]
        if params.get("gzip") == "1":
            headers.append(("Content-Encoding", "gzip"))
            raw = gzip.compress(raw)
        chunk = _int(params, "chunk", 0)
        if chunk > 0:
            return UpstreamResponse(200, headers, _pieces(raw, chunk, _float(params, "delay", 0.0)))
        return UpstreamResponse(200, headers, raw)
    if path == "/sse":
        n, delay = _int(params, "n", 3), _float(params, "delay", 0.5)
        reflected = req.header(params["reflect"]) if params.get("reflect") else None
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        return UpstreamResponse(200, headers, _sse(n, delay, reflected))
    if path == "/download":
        size = max(0, _int(params, "bytes", 0))
        headers = [("Content-Type", "application/octet-stream")]
        if params.get("chunked") != "1":
            headers.append(("Content-Length", str(size)))
        return UpstreamResponse(200, headers, _download(size))
    if path == "/redirect":
        target = params.get("to", "/echo")
        return _json_response(_int(params, "status", 302), {"location": target}, [("Location", target)])
    if path == "/set-cookie":
        return _json_response(200, {"cookie": "session=abc"}, [("Set-Cookie", "session=abc")])
    if path.startswith("/status/"):
        try:
            status = int(path.removeprefix("/status/"))
        except ValueError:
            status = 0
        if not 200 <= status <= 599:
            return _json_response(400, {"error": "status must be 200..599"})
        if status in (204, 304):
            return UpstreamResponse(status, [], b"")
        return _json_response(status, {"status": status})
    if path == "/delay":
        seconds = _float(params, "seconds", 1.0)
        await asyncio.sleep(seconds)
        return _json_response(200, {"delayed": seconds})
    if path == "/trailer":
        value = req.header(params.get("header", "")) or ""
        return UpstreamResponse(
            200, [("Content-Type", "text/plain")], b"ok", trailers=[("X-Reflected", value)]
        )
    if path == "/ws":
        return _json_response(426, {"error": "websocket upgrade required"}, [("Upgrade", "websocket")])
    return _json_response(404, {"error": "not found", "path": path})


async def _pieces(data: bytes, size: int, delay: float) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if i and delay > 0:
            await asyncio.sleep(delay)
        yield data[i : i + size]


async def _sse(n: int, delay: float, reflected: str | None) -> AsyncIterator[bytes]:
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        payload: dict[str, Any] = {"i": i}
        if reflected is not None:
            payload["reflected"] = reflected
        yield f"id: {i}\nevent: message\ndata: {json.dumps(payload)}\n\n".encode()


async def _download(size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = download_payload(min(_READ_SIZE, size - sent), sent)
        sent += len(piece)
        yield piece
        await asyncio.sleep(0)


# ----------------------------------------------------------------------------------------------------
# Server core
# ----------------------------------------------------------------------------------------------------


def _latin1(b: bytes) -> str:
    return b.decode("latin-1")


def _h1_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers]


def _write(writer: asyncio.StreamWriter, data: bytes | None) -> None:
    if data:
        writer.write(data)


class _BaseUpstream:
    """Shared machinery: background loop thread, accept loop, HTTP/1.1 + HTTP/2 + WebSocket serving."""

    scheme = "http"

    def __init__(self, *, http2: bool = False) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.http2 = http2
        self.requests_seen = RequestLog()
        self.sni_seen: list[str | None] = []
        self.connection_count = 0
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._ssl_context: ssl.SSLContext | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    @property
    def ws_port(self) -> int:
        """WebSockets are served on the main port (`/ws`)."""
        return self.port

    def url(self, path: str = "/", host: str = LOOPBACK) -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def ws_url(self, path: str = "/ws", host: str = LOOPBACK) -> str:
        ws_scheme = "wss" if self.scheme == "https" else "ws"
        return f"{ws_scheme}://{host}:{self.port}{path}"

    def _prepare(self) -> None:
        """Hook run in the caller's thread before the server thread starts."""

    def _cleanup(self) -> None:
        """Hook run in the caller's thread after the server thread stopped."""

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._prepare()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name=f"{type(self).__name__}", daemon=True
        )
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError(f"{type(self).__name__} did not start within 15 s")
        if self._startup_error is not None:
            self._thread.join(5)
            self._thread = None
            self._cleanup()
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(20)
        if thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} thread did not stop")
        self._thread = None
        self._cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:
            if not ready.is_set():
                self._startup_error = exc
            else:
                self.errors.append(exc)
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._on_connect, LOOPBACK, 0, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            tasks = list(self._conn_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    # ---- per connection ---------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self.connection_count += 1
        try:
            alpn: str | None = None
            if self._ssl_context is not None:
                await asyncio.wait_for(writer.start_tls(self._ssl_context), 15)
                ssl_object = writer.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if alpn == "h2":
                await self._serve_h2(reader, writer)
            else:
                await self._serve_h1(reader, writer)
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, EOFError):
            pass
        except asyncio.CancelledError:
            # Shutdown. Not re-raised: Python 3.12.1's StreamReaderProtocol logs cancelled handler tasks.
            writer.transport.abort()
        except Exception as exc:  # recorded for debugging; never raised into the loop
            self.errors.append(exc)
        finally:
            self._conn_tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        return await default_routes(req)

    async def _safe_handle(self, req: UpstreamRequest) -> UpstreamResponse:
        try:
            return await self.handle(req)
        except Exception as exc:
            self.errors.append(exc)
            return _json_response(500, {"error": f"upstream handler failed: {exc!r}"})

    # ---- HTTP/1.x ---------------------------------------------------------------------------------

    async def _serve_h1(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        while True:
            try:
                req = await self._h1_read(conn, reader, writer)
            except h11.RemoteProtocolError:
                with contextlib.suppress(h11.LocalProtocolError):
                    _write(
                        writer,
                        conn.send(h11.Response(status_code=400, headers=[("content-length", "0")])),
                    )
                    _write(writer, conn.send(h11.EndOfMessage()))
                await writer.drain()
                return
            if req is None:
                return
            if req.path == "/ws" and (req.header("upgrade") or "").lower() == "websocket":
                await self._serve_ws(conn, req, reader, writer)
                return
            self.requests_seen.append(req.record())
            resp = await self._safe_handle(req)
            await self._h1_send(conn, writer, req, resp)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _h1_read(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> UpstreamRequest | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    _write(writer, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    await writer.drain()
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = [(_latin1(k), _latin1(v)) for k, v in request.headers.raw_items()]
                req = UpstreamRequest(
                    method=_latin1(request.method),
                    target=_latin1(request.target),
                    headers=headers,
                    body=bytes(body),
                    http_version=f"HTTP/{_latin1(request.http_version)}",
                    scheme=self.scheme,
                    authority="",
                )
                req.authority = req.header("host") or ""
                return req
            else:  # ConnectionClosed or PAUSED
                return None

    async def _h1_send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, req: UpstreamRequest, resp: UpstreamResponse
    ) -> None:
        headers = list(resp.headers)
        no_body = _no_body(req.method, resp.status)
        if (length := _implicit_length(resp)) is not None:
            headers.append(("Content-Length", str(length)))
        reason = resp.reason.encode()
        head = h11.Response(status_code=resp.status, headers=_h1_headers(headers), reason=reason)
        _write(writer, conn.send(head))
        await writer.drain()
        if no_body:
            await _discard(resp.body)
        else:
            async for chunk in _iterate(resp.body):
                _write(writer, conn.send(h11.Data(data=chunk)))
                await writer.drain()
        _write(writer, conn.send(h11.EndOfMessage()))
        await writer.drain()

    # ---- WebSocket (HTTP/1.1 upgrade) -------------------------------------------------------------

    async def _serve_ws(
        self,
        conn: h11.Connection,
        req: UpstreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.requests_seen.append(req.record())
        key = req.header("sec-websocket-key")
        if not key or req.method != "GET":
            await self._h1_send(conn, writer, req, _json_response(400, {"error": "bad websocket handshake"}))
            return
        accept = base64.b64encode(hashlib.sha1((key.strip() + _WS_GUID).encode()).digest()).decode()
        response = h11.InformationalResponse(
            status_code=101,
            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)],
        )
        _write(writer, conn.send(response))
        leftover, _ = conn.trailing_data
        proto = Protocol(Side.SERVER, max_size=None)
        hello = {
            "path": req.target,
            "headers": req.header_dict(),
            "header_list": [[k, v] for k, v in req.headers],
        }
        proto.send_text(json.dumps(hello).encode())
        message_opcode: Opcode | None = None
        message = bytearray()

        def handle_events() -> None:
            nonlocal message_opcode
            for frame in proto.events_received():
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    message_opcode = frame.opcode
                    message[:] = frame.data
                elif frame.opcode is Opcode.CONT:
                    message.extend(frame.data)
                else:
                    continue  # ping/pong/close are answered by the protocol object itself
                if frame.fin and proto.state is State.OPEN:
                    if message_opcode is Opcode.TEXT:
                        proto.send_text(bytes(message))
                    else:
                        proto.send_binary(bytes(message))

        async def flush() -> bool:
            keep_open = True
            for data in proto.data_to_send():
                if data:
                    writer.write(data)
                else:
                    keep_open = False
            await writer.drain()
            return keep_open

        if leftover:
            proto.receive_data(bytes(leftover))
        while True:
            handle_events()
            if not await flush() or proto.state is State.CLOSED:
                return
            data = await reader.read(_READ_SIZE)
            if not data:
                proto.receive_eof()
                handle_events()
                await flush()
                return
            proto.receive_data(data)

    # ---- HTTP/2 -----------------------------------------------------------------------------------

    async def _serve_h2(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        conn.increment_flow_control_window(1 << 24)
        session = _H2Session(conn, writer)
        streams: dict[int, _H2Stream] = {}
        await session.flush()
        try:
            running = True
            while running:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await session.flush()
                    break
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived) and ev.stream_id is not None:
                        streams[ev.stream_id] = _H2Stream(list(ev.headers or []))
                    elif isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
                        stream = streams.get(ev.stream_id)
                        if stream is not None:
                            stream.body += ev.data or b""
                        with contextlib.suppress(h2.exceptions.H2Error):
                            conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id is not None:
                        stream = streams.get(ev.stream_id)
                        if stream is not None:
                            stream.trailers = list(ev.headers or [])
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id is not None:
                        stream = streams.get(ev.stream_id)
                        if stream is not None and stream.task is None:
                            stream.task = asyncio.create_task(self._h2_respond(session, ev.stream_id, stream))
                    elif isinstance(ev, h2.events.StreamReset) and ev.stream_id is not None:
                        stream = streams.pop(ev.stream_id, None)
                        if stream is not None and stream.task is not None:
                            stream.task.cancel()
                        session.wake(ev.stream_id)
                    elif isinstance(ev, h2.events.WindowUpdated):
                        session.wake(ev.stream_id or 0)
                    elif isinstance(ev, h2.events.RemoteSettingsChanged):
                        session.wake(0)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        running = False
                await session.flush()
        finally:
            tasks = [s.task for s in streams.values() if s.task is not None and not s.task.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _h2_respond(self, session: _H2Session, stream_id: int, stream: _H2Stream) -> None:
        pseudo = {_latin1(k): _latin1(v) for k, v in stream.headers if k.startswith(b":")}
        regular = [(_latin1(k), _latin1(v)) for k, v in stream.headers if not k.startswith(b":")]
        req = UpstreamRequest(
            method=pseudo.get(":method", "GET"),
            target=pseudo.get(":path", "/"),
            headers=regular,
            body=bytes(stream.body),
            http_version="HTTP/2",
            scheme=pseudo.get(":scheme", self.scheme),
            authority=pseudo.get(":authority", ""),
            trailers=[(_latin1(k), _latin1(v)) for k, v in stream.trailers],
        )
        self.requests_seen.append(req.record())
        resp = await self._safe_handle(req)
        headers: list[tuple[bytes, bytes]] = [(b":status", str(resp.status).encode())]
        for k, v in resp.headers:
            if k.lower() not in _HOP_BY_HOP:
                headers.append((k.lower().encode("latin-1"), v.encode("latin-1", "replace")))
        if (length := _implicit_length(resp)) is not None:
            headers.append((b"content-length", str(length).encode()))
        conn = session.conn
        try:
            if _no_body(req.method, resp.status):
                await _discard(resp.body)
                conn.send_headers(stream_id, headers, end_stream=True)
                await session.flush()
                return
            conn.send_headers(stream_id, headers)
            await session.flush()
            async for chunk in _iterate(resp.body):
                await session.send_data(stream_id, chunk)
            if resp.trailers:
                trailers = [
                    (k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in resp.trailers
                ]
                conn.send_headers(stream_id, trailers, end_stream=True)
            else:
                conn.end_stream(stream_id)
            await session.flush()
        except (h2.exceptions.H2Error, ConnectionError):
            return


class _H2Stream:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.task: asyncio.Task[None] | None = None


class _H2Session:
    def __init__(self, conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.writer = writer
        self._window_events: dict[int, asyncio.Event] = {}

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def wake(self, stream_id: int) -> None:
        if stream_id == 0:
            for ev in self._window_events.values():
                ev.set()
        elif stream_id in self._window_events:
            self._window_events[stream_id].set()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            window = self.conn.local_flow_control_window(stream_id)
            if window <= 0:
                ev = self._window_events.setdefault(stream_id, asyncio.Event())
                ev.clear()
                await ev.wait()
                continue
            n = min(len(view), window, self.conn.max_outbound_frame_size)
            self.conn.send_data(stream_id, view[:n].tobytes())
            view = view[n:]
            await self.flush()


# ----------------------------------------------------------------------------------------------------
# Public servers
# ----------------------------------------------------------------------------------------------------


class PlainUpstream(_BaseUpstream):
    """The endpoints over plain HTTP/1.1 (for absolute-form `http://` and plaintext-in-CONNECT tests)."""

    scheme = "http"

    def __init__(self) -> None:
        super().__init__(http2=False)


class TLSUpstream(_BaseUpstream):
    """HTTPS upstream with a certificate from a trustme CA for `hostnames`.

    `TLSUpstream(*, ca=None, hostnames=DEFAULT_HOSTNAMES, http2=True)`: pass `ca` to share one CA between
    several upstreams; `http2=False` offers only `http/1.1` in ALPN. `ca_pem_path` is available after start.
    """

    scheme = "https"

    def __init__(
        self,
        *,
        ca: trustme.CA | None = None,
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
        http2: bool = True,
    ) -> None:
        super().__init__(http2=http2)
        self.ca = ca if ca is not None else trustme.CA()
        self.hostnames = tuple(hostnames)
        self.cert = self.ca.issue_cert(*self.hostnames)
        self.ca_pem_path = ""
        self._tmpdir: str | None = None

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this upstream's CA (and nothing else)."""
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode())
        return ctx

    def _prepare(self) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix="av-upstream-")
        self.ca_pem_path = os.path.join(self._tmpdir, "upstream-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_pem_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["h2", "http/1.1"] if self.http2 else ["http/1.1"])

        def on_sni(_sock: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            self.sni_seen.append(server_name)

        ctx.sni_callback = on_sni
        self._ssl_context = ctx

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


# ----------------------------------------------------------------------------------------------------
# git over HTTPS
# ----------------------------------------------------------------------------------------------------


def _git_http_backend() -> str:
    exec_path = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    backend = os.path.join(exec_path, "git-http-backend")
    if not os.access(backend, os.X_OK):
        raise FileNotFoundError(f"git-http-backend not found at {backend}")
    return backend


def git_env(home: str | os.PathLike[str], **extra: str) -> dict[str, str]:
    """A minimal environment for git in tests: no proxy variables, no user/system config, no prompts."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.fspath(home),
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    env.update(extra)
    return env


def make_bare_repo(
    path: str | os.PathLike[str], *, commits: int = 3, large_file_bytes: int = 0, branch: str = "main"
) -> Path:
    """Create a bare repository at `path` with `commits` commits (file `file-<i>.txt` each) and, if
    `large_file_bytes` > 0, one more commit adding `large.bin` of that many random bytes.

    Pushes to it over HTTP are allowed (`http.receivepack`)."""
    bare = Path(path)
    with tempfile.TemporaryDirectory(prefix="av-git-") as tmp:
        work = Path(tmp) / "work"
        env = git_env(tmp)

        def git(*args: str, cwd: Path = work) -> None:
            subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

        git("init", "-q", "-b", branch, str(work), cwd=Path(tmp))
        for i in range(commits):
            (work / f"file-{i}.txt").write_text(f"content {i}\n")
            git("add", f"file-{i}.txt")
            git("commit", "-q", "-m", f"commit {i}")
        if large_file_bytes > 0:
            with open(work / "large.bin", "wb") as fh:
                remaining = large_file_bytes
                while remaining:
                    piece = os.urandom(min(remaining, 1 << 20))
                    fh.write(piece)
                    remaining -= len(piece)
            git("add", "large.bin")
            git("commit", "-q", "-m", "large file")
        git("clone", "-q", "--bare", str(work), str(bare), cwd=Path(tmp))
    subprocess.run(
        ["git", "--git-dir", str(bare), "config", "http.receivepack", "true"],
        env=git_env(bare),
        check=True,
        capture_output=True,
    )
    return bare


class GitHttpUpstream(TLSUpstream):
    """Serves every git repository under `root` over HTTPS via `git http-backend`, behind HTTP basic auth.

    `GitHttpUpstream(root, *, username="x-access-token", password, ca=None, hostnames=DEFAULT_HOSTNAMES,
    http2=True)`. Requests without the right `Authorization: Basic` get 401 with
    `WWW-Authenticate: Basic realm="git"`. Clone URL: `clone_url("repo.git")`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        username: str = "x-access-token",
        password: str,
        ca: trustme.CA | None = None,
        hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
        http2: bool = True,
    ) -> None:
        super().__init__(ca=ca, hostnames=hostnames, http2=http2)
        self.root = Path(root).resolve()
        self.username = username
        self.password = password
        self._backend = _git_http_backend()
        self.auth_failures = 0

    def clone_url(self, repo: str = "repo.git", host: str = LOOPBACK, userinfo: str | None = None) -> str:
        auth = f"{userinfo}@" if userinfo else ""
        return f"https://{auth}{host}:{self.port}/{repo}"

    def _authorised(self, req: UpstreamRequest) -> bool:
        value = req.header("authorization") or ""
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(param.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (
            bool(sep)
            & hmac.compare_digest(user.encode(), self.username.encode())
            & hmac.compare_digest(password.encode(), self.password.encode())
        )

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if not self._authorised(req):
            self.auth_failures += 1
            return UpstreamResponse(
                401,
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
                b"authentication required\n",
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": req.method,
            "PATH_INFO": req.path,
            "QUERY_STRING": req.query,
            "CONTENT_TYPE": req.header("content-type") or "",
            "CONTENT_LENGTH": str(len(req.body)),
            "REMOTE_USER": self.username,
            "REMOTE_ADDR": LOOPBACK,
        }
        if req.header("git-protocol"):
            env["GIT_PROTOCOL"] = req.header("git-protocol") or ""
        if req.header("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = req.header("content-encoding") or ""
        proc = await asyncio.create_subprocess_exec(
            self._backend,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        async def feed() -> None:
            with contextlib.suppress(ConnectionError):
                stdin.write(req.body)
                await stdin.drain()
            stdin.close()

        feeder = asyncio.create_task(feed())
        errors = asyncio.create_task(stderr.read())

        async def finish(abort: bool) -> None:
            if abort and proc.returncode is None:
                # os.kill, not proc.kill(): Popen.send_signal() polls and would reap the child behind the back
                # of asyncio's child watcher ("exit status already read" warnings). A zombie ignores it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            feeder.cancel()
            await asyncio.gather(feeder, errors, return_exceptions=True)

        try:
            head = bytearray()
            while b"\r\n\r\n" not in head and b"\n\n" not in head:
                chunk = await stdout.read(_READ_SIZE)
                if not chunk:
                    break
                head += chunk
        except BaseException:
            await finish(abort=True)
            raise
        sep = b"\r\n\r\n" if b"\r\n\r\n" in head else b"\n\n"
        raw_headers, _, rest = bytes(head).partition(sep)
        status, headers = 200, []
        for line in raw_headers.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        if not raw_headers:
            await finish(abort=True)
            return _json_response(502, {"error": "git http-backend produced no output"})

        async def body() -> AsyncIterator[bytes]:
            complete = False
            try:
                if rest:
                    yield rest
                while chunk := await stdout.read(_READ_SIZE):
                    yield chunk
                complete = True
            finally:
                await finish(abort=not complete)

        return UpstreamResponse(status, headers, body())
