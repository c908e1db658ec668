"""A hostile HTTP/1 client tries to grow the server's memory while its request waits (SPEC §5.10).

* A chunked request body sent while an approval hold waits: the engine queued every byte of it until
  the human decided (only a Content-Length was checked against `--max-request-bytes`). Now the held
  body counts against that limit whatever its framing; after the decision the agent gets the same
  413 `body_too_large` (`limit_bytes`) on both paths, and the request its audit record.
* Bytes sent after a complete request, while its response is awaited (pipelining or garbage): the
  engine's HTTP/1 server appended them all to its receive buffer. Now it keeps at most
  `h1bounds.WAITING_INPUT_CAP`: the in-flight request still gets its response (with `Connection:
  close`) and its audit record, then the connection closes.
* The upstream's side of that: an upstream that answers while the agent still uploads and then keeps
  sending. The engine's HTTP/1 client kept it all; now the upstream and the agent's connection close.

Each scenario runs on both paths (`--fast-path on`, where the lean loop applies TCP backpressure,
and `off`, the engine). The server's RSS is watched as in `test_adversarial_bombs` (a watchdog
SIGKILLs it past `KILL_GROWTH`); growth must stay under `MAX_GROWTH`, far below what was sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from helpers.proxy import basic
from helpers.raw_tls import RawTLSServer, read_head
from helpers.server import OWNER_PASSWORD
from helpers.upstream import TLSUpstream
from security.conftest import Sweep, SweptServer, audit_rows, proxy_error, start_server
from security.test_adversarial_bombs import RssWatch

MiB = 1 << 20
LIMIT = 8 * MiB  # the server's --max-request-bytes
SENT = 160 * MiB  # what the hostile client tries to pile up
MAX_GROWTH = 64 * MiB
PIECE = bytes(64 << 10)
HOST = "api.upstream.test"
HELD_HOST = "other.upstream.test"  # the service whose POSTs wait for approval
EARLY_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def upstream(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module", params=["on", "off"], ids=["fast", "engine"])
def srv(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    sweep: Sweep,
    upstream: TLSUpstream,
) -> Iterator[SweptServer]:
    args = ("--max-request-bytes", str(LIMIT), "--fast-path", request.param)
    for s in start_server(tmp_path_factory, upstream_ca, sweep, f"h1mem-{request.param}", extra_args=args):
        s.set_credential("H1_KEY", "sk-h1-memory-not-a-real-key-4c1d")
        bearer = {"type": "bearer", "token": "H1_KEY"}
        s.add_service(
            {
                "name": "held",
                "host": HELD_HOST,
                "port": upstream.port,
                "auth": bearer,
                "approval": {"methods": ["POST"], "timeout_seconds": 60},
            }
        )
        s.add_service({"name": "plain", "host": HOST, "port": upstream.port, "auth": bearer})
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("h1-memory-bot")


@pytest.fixture
def rss(srv: SweptServer) -> Iterator[RssWatch]:
    assert srv.proc is not None
    w = RssWatch(srv.proc.pid)
    yield w
    w.growth()


# ---- a raw agent ------------------------------------------------------------------------------------


async def _tunnel(
    srv: SweptServer, token: str, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT, then TLS offering http/1.1 only (a fast-path connection when the fast path is on)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.proxy_port)
    target = f"{host}:{port}"
    writer.write(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic(token)}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.split(b" ")[1] == b"200", head
    ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
    ctx.set_alpn_protocols(["http/1.1"])
    await writer.start_tls(ctx, server_hostname=host)
    return reader, writer


@dataclass
class Pump:
    """Writes up to SENT bytes (chunk-framed or raw) as fast as the proxy takes them."""

    writer: asyncio.StreamWriter
    chunked: bool
    sent: int = 0
    last: float = field(default_factory=time.monotonic)  # the last progress

    async def run(self) -> None:
        data = b"%x\r\n%s\r\n" % (len(PIECE), PIECE) if self.chunked else PIECE
        try:
            while self.sent < SENT:
                self.writer.write(data)
                await self.writer.drain()
                self.sent += len(PIECE)
                self.last = time.monotonic()
        except (ConnectionError, ssl.SSLError, RuntimeError):
            pass  # the proxy closed the connection (after its answer)

    async def until_full_or_stalled(self, task: asyncio.Task[None]) -> None:
        """Until everything is sent, or the proxy has stopped reading for 1.5 s (backpressure)."""
        while not task.done() and time.monotonic() - self.last < 1.5:
            await asyncio.sleep(0.1)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    assert "chunked" in headers.get("transfer-encoding", ""), headers
    body = b""
    while size := int((await reader.readline()).strip(), 16):
        body += await reader.readexactly(size)
        await reader.readline()
    await reader.readline()
    return status, headers, body


async def _rest(reader: asyncio.StreamReader) -> bytes:
    """Whatever the proxy sends until it closes the connection (EOF within 10 s)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionError, ssl.SSLError):
        return b""


def _audit(srv: SweptServer, path: str) -> dict[str, Any]:
    end = time.monotonic() + 5
    while True:
        rows = [r for r in audit_rows(srv.home) if r.get("path") == path]
        if rows or time.monotonic() > end:
            assert rows, f"no audit record for {path}\n{srv.stderr_text()[-2000:]}"
            return rows[-1]
        time.sleep(0.1)


def _small(srv: SweptServer, rss: RssWatch) -> None:
    growth = rss.growth()
    assert not rss.killed, "the server's RSS exploded (killed by the watchdog)"
    assert srv.alive(), "the server died"
    assert growth < MAX_GROWTH, f"server RSS grew by {growth / MiB:.0f} MiB"


def _one_hold(srv: SweptServer) -> str:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with srv.http() as c:
            holds = c.get("/v1/vaults/default/holds").json()["holds"]
        if holds:
            assert len(holds) == 1, holds
            return str(holds[0]["id"])
        time.sleep(0.1)
    raise AssertionError("no pending hold")


def _approve(srv: SweptServer, hold: str) -> None:
    with srv.http() as c:
        body = {"password": OWNER_PASSWORD, "scope": "once"}
        r = c.post(f"/v1/vaults/default/holds/{hold}/approve", json=body)
        assert r.status_code == 200, r.text


# ---- 1. a chunked body while an approval hold waits --------------------------------------------------


def test_held_chunked_body_counts_against_the_request_limit(
    srv: SweptServer, upstream: TLSUpstream, token: str, rss: RssWatch
) -> None:
    path = f"/echo/held/{srv.extra_args[-1]}"

    async def scenario() -> tuple[int, dict[str, str], bytes, int]:
        reader, writer = await _tunnel(srv, token, HELD_HOST, upstream.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {HELD_HOST}\r\nContent-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        await writer.drain()
        hold = await asyncio.to_thread(_one_hold, srv)
        pump = Pump(writer, chunked=True)
        task = asyncio.create_task(pump.run())
        await pump.until_full_or_stalled(task)
        await asyncio.to_thread(_small, srv, rss)  # while the hold still waits
        await asyncio.to_thread(_approve, srv, hold)
        status, headers, body = await _response(reader)
        task.cancel()
        writer.transport.abort()
        return status, headers, body, pump.sent

    status, headers, body, sent = asyncio.run(scenario())
    assert proxy_error(status, headers, body, "body_too_large") == "body_too_large"
    assert json.loads(body)["limit_bytes"] == LIMIT
    assert headers.get("connection", "").lower() == "close"
    row = _audit(srv, path)
    assert (row["status"], row["error"]) == (413, "body_too_large"), row
    assert not [r for r in upstream.requests_seen.snapshot() if r["path"] == path]  # never forwarded whole
    assert sent > LIMIT  # the client did send past the limit (into buffers or backpressure)


# ---- 2. bytes after a complete request, while its response is awaited --------------------------------


def test_input_while_a_response_is_awaited_is_bounded(
    srv: SweptServer, upstream: TLSUpstream, token: str, rss: RssWatch
) -> None:
    path = "/delay"

    async def scenario() -> tuple[int, dict[str, str], bytes, bytes]:
        reader, writer = await _tunnel(srv, token, HOST, upstream.port)
        writer.write(f"GET {path}?seconds=5 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        pump = Pump(writer, chunked=False)
        task = asyncio.create_task(pump.run())
        await pump.until_full_or_stalled(task)
        await asyncio.to_thread(_small, srv, rss)  # the response is still awaited
        status, headers, body = await _response(reader)
        rest = await _rest(reader)
        task.cancel()
        writer.transport.abort()
        return status, headers, body, rest

    status, headers, body, rest = asyncio.run(scenario())
    assert status == 200 and json.loads(body) == {"delayed": 5.0}, (status, body[:200])
    # then the connection ends: the engine closes it after this response (`Connection: close`); the
    # fast path, which never read past its inbox, refuses the bytes as the next request head (431)
    if rest:
        assert rest.startswith(b"HTTP/1.1 4"), rest[:200]
    else:
        assert headers.get("connection", "").lower() == "close", headers
    row = _audit(srv, path)
    assert row["status"] == 200 and row.get("error") is None, row


# ---- 3. an upstream that answers before the upload ends, then keeps sending ---------------------------


class Early:
    """A hostile upstream: per connection, it reads the request head, answers at once (`200`, `ok`),
    then sends up to SENT bytes of junk as fast as the proxy reads them (`sent` counts them)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.sent = 0
        self.server = RawTLSServer(ca, self.handle)
        self.port = self.server.port

    def handle(self, tls: ssl.SSLSocket) -> None:
        self.sent = 0
        read_head(tls)
        tls.sendall(EARLY_ANSWER)
        while self.sent < SENT:
            tls.sendall(PIECE)
            self.sent += len(PIECE)


@pytest.fixture(scope="module")
def early(upstream_ca: trustme.CA) -> Iterator[Early]:
    e = Early(upstream_ca)
    with e.server:
        yield e
    assert not e.server.errors, e.server.errors


def test_upstream_input_after_an_early_answer_is_bounded(
    srv: SweptServer, early: Early, token: str, rss: RssWatch
) -> None:
    """The upstream answers while the agent still uploads, then floods: the engine's HTTP/1 client kept
    every byte after the answer in its receive buffer (it waits for the upload to end before it parses
    anything more). Now a byte after a complete answer, while the upload goes on, closes the upstream
    and the agent's connection (the agent already has its answer); the fast path reads the upstream
    only after the upload."""
    bearer = {"type": "bearer", "token": "H1_KEY"}
    srv.add_service({"name": "early", "host": HOST, "port": early.port, "auth": bearer})
    path = f"/early/{srv.extra_args[-1]}"
    stop = threading.Event()

    async def trickle(writer: asyncio.StreamWriter) -> None:
        """A slow upload (1 KiB every 50 ms) that is still going when the upstream answers."""
        try:
            while not stop.is_set():
                writer.write(b"400\r\n" + bytes(1024) + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, ssl.SSLError, RuntimeError):
            pass  # the proxy closed the connection

    async def scenario() -> tuple[int, bytes, bytes]:
        reader, writer = await _tunnel(srv, token, HOST, early.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        task = asyncio.create_task(trickle(writer))
        last, still_since, end = -1, time.monotonic(), time.monotonic() + 15
        while time.monotonic() < end and early.sent < SENT and rss.peak - rss.base < MAX_GROWTH:
            await asyncio.sleep(0.1)
            if early.sent != last:
                last, still_since = early.sent, time.monotonic()
            elif time.monotonic() - still_since > 1.5 and early.sent > 0:
                break  # the proxy stopped reading the upstream (or closed it)
        await asyncio.to_thread(_small, srv, rss)  # the upload is still going
        stop.set()
        await task
        status, _, body = await _response(reader)
        rest = await _rest(reader) if srv.extra_args[-1] == "off" else b""
        writer.transport.abort()
        return status, body, rest

    status, body, rest = asyncio.run(scenario())
    assert (status, body) == (200, b"ok")
    assert rest == b"", rest[:200]  # engine: then the connection closed
    assert early.sent < SENT, "the proxy read everything the upstream sent after its answer"
    assert "has crashed" not in srv.stderr_text()  # mitmproxy's stream layer crashed on each read
    row = _audit(srv, path)
    assert row["status"] == 200, row


def test_install_is_idempotent_and_uninstall_restores_mitmproxy() -> None:
    from agent_vault.proxy import h1bounds
    from agent_vault.proxy.engine_compat import _http1

    if h1bounds._saved is not None:  # pragma: no cover - a live engine in this process owns the patch
        pytest.skip("the engine is installed in this process")
    server, client = _http1.Http1Server, _http1.Http1Client
    wait, send, handle = server.wait, server.send, client._handle_event
    h1bounds.install()
    h1bounds.install()
    assert server.wait is not wait and server.send is not send and client._handle_event is not handle
    h1bounds.uninstall()
    h1bounds.uninstall()
    assert "wait" not in server.__dict__ and server.wait is wait and server.send is send
    assert "_handle_event" not in client.__dict__ and client._handle_event is handle


# ---- 4. a refused upload: the answer is not lost to a reset (RFC 9112 §9.6) --------------------------


def _blocking_tunnel(srv: SweptServer, token: str, host: str, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=30)
    target = f"{host}:{port}"
    raw.sendall(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic(token)}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)
    assert head.split(b" ")[1] == b"200", head
    ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(raw, server_hostname=host)


def test_a_refused_upload_keeps_being_read_after_the_answer(
    srv: SweptServer, upstream: TLSUpstream, token: str, rss: RssWatch
) -> None:
    """A POST announcing more than --max-request-bytes is refused at its head (413) and the connection
    closes. An agent that goes on sending its body (as upload clients do until they look at the answer)
    must not have the connection reset under it at once: a reset can discard the 413 before the agent
    reads it. Both paths go on reading (the fast path reads and discards what still comes, bounded:
    2 s, 16 MiB, `fast/session.Session._linger`; without it this test fails on the fast path)."""
    conn = _blocking_tunnel(srv, token, HOST, upstream.port)
    try:
        conn.sendall(
            f"POST /echo/refused HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {LIMIT * 2}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        time.sleep(0.3)  # the proxy has answered and, without lingering, closed by now
        sent = 0
        while sent < 4 * MiB:  # well within the linger (16 MiB, 2 s)
            conn.sendall(PIECE)
            sent += len(PIECE)
    finally:
        conn.close()
    _small(srv, rss)
