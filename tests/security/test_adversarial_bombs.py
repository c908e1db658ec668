"""A hostile upstream tries to exhaust the server's memory (SPEC §5.8, §5.9, issue #22).

* Decompression bombs (br, gzip, deflate, zstd: a few hundred KiB that decode to GiBs) on a service
  whose responses are redacted, buffered (Content-Length) and streamed (chunked): the agent gets
  `response_too_large` (or a reset stream once headers were sent), the audit record carries the
  code, the server keeps answering, and its peak RSS grows by less than `MAX_GROWTH`.
* A service that opted out of redaction gets the compressed bytes untouched (nothing decoded), and
  a compressed request body to a body-substitution service is forwarded as sent (never decoded).
* WebSockets: thousands of messages leave the RSS flat (mitmproxy keeps every message otherwise);
  a permessage-deflate bomb is refused (compression is never negotiated through the proxy) and a
  message over the cap closes the WebSocket with 1009.
* HTTP/2 trailers echoing the injected value reach the agent as `[REDACTED:KEY]`.

Bombs are built by compressing zero chunks (never the plaintext); the gzip/deflate ones repeat one
fully flushed block. A watchdog SIGKILLs the server (our own child, by pid) if its RSS passes
`KILL_GROWTH`, so an unbounded decoder fails the test instead of the machine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Any

import brotli  # type: ignore[import-untyped]
import h2.config
import h2.connection
import h2.events
import h11
import httpx
import pytest
import trustme
from helpers.proxy import basic
from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse
from helpers.wsclient import ws_via_proxy
from security.conftest import Sweep, SweptServer, audit_rows, new_secret, start_server, value_forms
from websockets.exceptions import ConnectionClosed

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover
    from backports import zstd

MiB = 1 << 20
LIMIT = 8 * MiB  # the server's --max-buffered-bytes
MAX_GROWTH = 200 * MiB
KILL_GROWTH = 1536 * MiB
ZERO = bytes(MiB)
V: dict[str, str] = {}
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---- bombs ------------------------------------------------------------------------------------------


def _flushed_deflate(mib: int, wbits: int) -> tuple[bytes, bytes]:
    """(head, body) of a deflate stream of `mib` MiB of zeros, every MiB a fully flushed block (so
    all blocks after the first are the same bytes): head = first block (with the gzip/zlib header)."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = c.compress(ZERO) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(ZERO) + c.flush(zlib.Z_FULL_FLUSH)
    return first, block * (mib - 1)


@cache
def bomb(encoding: str, mib: int) -> bytes:
    """`mib` MiB of zeros in `encoding` (a valid stream, built without the plaintext)."""
    n = mib * MiB
    if encoding == "br":
        b = brotli.Compressor(quality=1)
        return b"".join(b.process(ZERO) for _ in range(mib)) + b.finish()
    if encoding == "zstd":
        z = zstd.ZstdCompressor(level=1)
        return b"".join(z.compress(ZERO) for _ in range(mib)) + z.flush()
    final = b"\x03\x00"  # an empty final block (fixed Huffman), byte-aligned after a full flush
    if encoding == "gzip":
        head, body = _flushed_deflate(mib, 31)
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(ZERO, crc)
        return head + body + final + struct.pack("<II", crc, n & 0xFFFFFFFF)
    assert encoding == "deflate"
    head, body = _flushed_deflate(mib, zlib.MAX_WBITS)
    return head + body + final + struct.pack(">I", ((n % 65521) << 16) | 1)  # adler32 of zeros


def ws_deflate_bomb(mib: int) -> bytes:
    """A permessage-deflate message payload (raw deflate, the final 00 00 ff ff removed)."""
    head, body = _flushed_deflate(mib, -zlib.MAX_WBITS)
    return (head + body)[:-4]


# Buffered bombs must stay under the proxy's 1 MiB streaming threshold with their Content-Length.
BUFFERED = {"br": 4096, "zstd": 4096, "gzip": 960, "deflate": 960}
STREAMED = {"br": 4096, "zstd": 4096, "gzip": 2048, "deflate": 2048}


def test_bombs_are_valid_and_small() -> None:
    for enc in ("gzip", "deflate"):
        data = bomb(enc, 3)
        assert (zlib.decompress(data, 31 if enc == "gzip" else 15)) == bytes(3 * MiB)
    assert len(bomb("gzip", BUFFERED["gzip"])) < MiB and len(bomb("br", BUFFERED["br"])) < MiB
    z = zlib.decompressobj(-zlib.MAX_WBITS)
    assert z.decompress(ws_deflate_bomb(3) + b"\x00\x00\xff\xff") == bytes(3 * MiB)


# ---- the hostile upstream ---------------------------------------------------------------------------


async def _pieces(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


class Hostile(TLSUpstream):
    """`/bomb/<encoding>/<MiB>[?chunked=1]`, `/sink`, `/trailer-stream?header=NAME`, and WebSockets
    `/ws?flood=N&size=S`, `/ws?deflate_bomb=MiB`, `/ws?big=MiB` (plus the helper's routes)."""

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        parts = req.path.split("/")
        if len(parts) == 4 and parts[1] == "bomb":
            enc, mib = parts[2], int(parts[3])
            headers = [("Content-Type", "application/json"), ("Content-Encoding", enc)]
            data = bomb(enc, mib)
            return UpstreamResponse(200, headers, _pieces(data) if req.params.get("chunked") else data)
        if req.path == "/trailer-stream":  # no length: the proxy streams it, trailers come after
            value = req.header(req.params.get("header", "")) or ""
            return UpstreamResponse(
                200, [("Content-Type", "text/plain")], _pieces(b"ok"), [("X-Reflected", value)]
            )
        if req.path == "/forge-trailer":  # an upstream forging proxy fields where headers were not checked
            forged = [("X-Agent-Vault-Proxy-Error", "true"), ("X-Agent-Vault-Vault", "evil")]
            trailers = [*forged, ("Set-Cookie", "a=b"), ("Proxy-Authenticate", "Basic"), ("X-Fine", "1")]
            return UpstreamResponse(200, [("Content-Type", "text/plain")], _pieces(b"ok"), trailers)
        if req.path == "/sink":
            body = json.dumps({"length": len(req.body), "sha256": hashlib.sha256(req.body).hexdigest()})
            return UpstreamResponse(200, [("Content-Type", "application/json")], body.encode())
        return await super().handle(req)

    async def _serve_ws(
        self,
        conn: h11.Connection,
        req: UpstreamRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        p = req.params
        if not {"flood", "deflate_bomb", "big"} & p.keys():
            return await super()._serve_ws(conn, req, reader, writer)
        self.requests_seen.append(req.record())
        key = (req.header("sec-websocket-key") or "").strip()
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        if "deflate_bomb" in p:  # accepted whether or not the client offered it
            headers.append(("Sec-WebSocket-Extensions", "permessage-deflate"))
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
        if "flood" in p:
            size, n = int(p.get("size", "65536")), int(p["flood"])
            for i in range(n):
                writer.write(_frame(0x81, (b"%08d" % i) + b"x" * (size - 8)))
                if i % 16 == 0:
                    await writer.drain()
            writer.write(_frame(0x88, struct.pack(">H", 1000)))
        elif "deflate_bomb" in p:
            writer.write(_frame(0xC2, ws_deflate_bomb(int(p["deflate_bomb"]))))  # FIN | RSV1 | binary
        else:
            writer.write(_frame(0x82, bytes(int(p["big"]) * MiB)))
        await writer.drain()
        with_timeout = asyncio.wait_for(reader.read(65536), 20)
        while await with_timeout:  # until the peer closes
            with_timeout = asyncio.wait_for(reader.read(65536), 20)


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([first, n])
    elif n < 1 << 16:
        head = bytes([first, 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 127]) + struct.pack(">Q", n)
    return head + payload


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(upstream_ca: trustme.CA) -> Iterator[Hostile]:
    with Hostile(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep, hostile: Hostile
) -> Iterator[SweptServer]:
    args = ("--max-buffered-bytes", str(LIMIT))
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "bombs", extra_args=args):
        V.update(BOMB_KEY=new_secret())
        s.set_credential("BOMB_KEY", V["BOMB_KEY"])
        bearer = {"type": "bearer", "token": "BOMB_KEY"}
        port = hostile.port
        s.add_service({"name": "redacted", "host": "api.upstream.test", "port": port, "auth": bearer})
        s.add_service(
            {
                "name": "unredacted",
                "host": "other.upstream.test",
                "port": port,
                "auth": bearer,
                "redact_response": False,
            }
        )
        s.add_service(
            {
                "name": "body-sub",
                "host": "upstream.test",
                "port": port,
                "auth": bearer,
                "substitutions": {"in": ["header", "body"]},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    return srv.make_agent("bomb-bot")


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {"VmRSS": 0, "VmHWM": 0}  # a zombie has neither
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


class RssWatch:
    """Peak RSS of the server during a test (VmHWM after a reset, and a 10 ms poll as a fallback);
    SIGKILLs the server past KILL_GROWTH so an unbounded decoder cannot take the machine down."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = _status(pid)["VmRSS"]
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.peak = self.base
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            try:
                st = _status(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, st["VmRSS"], st["VmHWM"])
            if self.peak - self.base > KILL_GROWTH:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
                return

    def growth(self) -> int:
        self._stop.set()
        self._thread.join()
        if not self.killed:
            st = _status(self.pid)
            self.peak = max(self.peak, st["VmRSS"], st["VmHWM"])
        return self.peak - self.base


@pytest.fixture
def rss(srv: SweptServer) -> Iterator[RssWatch]:
    assert srv.proc is not None
    w = RssWatch(srv.proc.pid)
    yield w
    w.growth()


def _client(srv: SweptServer, token: str) -> httpx.Client:
    """An agent's client that leaves streams unread (SweptServer.agent_client reads every body)."""
    return httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=60)


def _alive_and_small(srv: SweptServer, rss: RssWatch) -> None:
    growth = rss.growth()
    assert not rss.killed, "the server's RSS exploded (killed by the watchdog)"
    assert srv.alive(), "the server died"
    with srv.http() as c:
        assert c.get("/v1/vaults").status_code == 200  # the API still answers
    assert growth < MAX_GROWTH, f"server RSS grew by {growth / MiB:.0f} MiB"


def _audit(srv: SweptServer, path: str) -> dict[str, Any]:
    end = time.monotonic() + 5
    while True:
        rows = [r for r in audit_rows(srv.home) if r.get("path") == path.split("?")[0]]
        if rows or time.monotonic() > end:
            seen = [(r.get("path"), r.get("error")) for r in audit_rows(srv.home)][-5:]
            assert rows, f"no audit record for {path}: {seen}\n{srv.stderr_text()[-2000:]}"
            return rows[-1]
        time.sleep(0.1)


# ---- decompression bombs ----------------------------------------------------------------------------

ENCODINGS = ["br", "gzip", "deflate", "zstd"]


@pytest.mark.parametrize("enc", ENCODINGS)
def test_buffered_bomb_is_refused_with_response_too_large(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch, enc: str
) -> None:
    path = f"/bomb/{enc}/{BUFFERED[enc]}"
    with _client(srv, token) as c:
        r = c.get(f"https://api.upstream.test:{hostile.port}{path}")
    _alive_and_small(srv, rss)
    assert r.status_code == 502, (r.status_code, r.headers)
    assert (
        r.headers["x-agent-vault-proxy-error"] == "true" and r.headers["content-type"] == "application/json"
    )
    body = r.json()
    assert body["error"] == "response_too_large" and body["limit_bytes"] == LIMIT
    assert body["message"] and body["hint"]
    record = _audit(srv, path)
    assert record["error"] == "response_too_large" and record["status"] == 502


@pytest.mark.parametrize("enc", ENCODINGS)
def test_streamed_bomb_is_aborted_at_the_cap(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch, enc: str
) -> None:
    path = f"/bomb/{enc}/{STREAMED[enc]}?chunked=1"
    received = 0
    error: Exception | None = None
    url = f"https://api.upstream.test:{hostile.port}{path}"
    with _client(srv, token) as c, c.stream("GET", url) as r:
        assert r.status_code == 200
        assert "content-encoding" not in r.headers  # decoded for redaction
        try:
            for piece in r.iter_raw():
                received += len(piece)
                assert received <= LIMIT, "the agent got more than the cap: the stream was not cut"
        except httpx.HTTPError as e:  # the reset stream
            error = e
    _alive_and_small(srv, rss)
    assert error is not None, f"the stream ended normally after {received} bytes: a truncated body"
    record = _audit(srv, path)
    assert record["error"] == "response_too_large"
    assert not isinstance(error, httpx.TimeoutException), (record, received, srv.stderr_text()[-3000:])


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_service_without_redaction_gets_the_bomb_undecoded(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch, chunked: bool
) -> None:
    data = bomb("zstd", 4096)
    url = f"https://other.upstream.test:{hostile.port}/bomb/zstd/4096" + ("?chunked=1" if chunked else "")
    with _client(srv, token) as c, c.stream("GET", url) as r:
        raw = b"".join(r.iter_raw())
    _alive_and_small(srv, rss)
    assert r.status_code == 200 and r.headers["content-encoding"] == "zstd"
    assert raw == data  # byte for byte: nothing was decoded


def test_compressed_request_body_is_never_decoded(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch
) -> None:
    """SPEC §5.6: a compressed body is not rewritten, so a request bomb is never inflated."""
    data = bomb("gzip", BUFFERED["gzip"])
    with _client(srv, token) as c:
        r = c.post(
            f"https://upstream.test:{hostile.port}/sink",
            content=data,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )
    _alive_and_small(srv, rss)
    assert r.status_code == 200
    assert r.json() == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ---- WebSockets -------------------------------------------------------------------------------------


def _ws(srv: SweptServer, token: str, port: int, query: str) -> Any:
    url = f"wss://api.upstream.test:{port}/ws?{query}"
    return ws_via_proxy(srv.proxy_port, token, url, str(srv.ca_bundle), close_timeout=5, max_size=None)


def test_websocket_history_is_not_kept(srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch) -> None:
    n, size = 4000, 64 << 10  # 250 MiB through one WebSocket
    count = 0
    with _ws(srv, token, hostile.port, f"flood={n}&size={size}") as ws:
        try:
            while True:
                msg = ws.recv(timeout=30)
                assert len(msg) == size
                count += 1
        except ConnectionClosed:
            pass
    assert count == n
    _alive_and_small(srv, rss)
    assert rss.peak - rss.base < 100 * MiB, f"RSS grew by {(rss.peak - rss.base) / MiB:.0f} MiB"


def test_websocket_deflate_bomb_is_refused(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch
) -> None:
    hostile.requests_seen.clear()
    with _ws(srv, token, hostile.port, "deflate_bomb=2048") as ws:
        assert ws.response is not None
        assert "sec-websocket-extensions" not in {k.lower() for k in ws.response.headers}
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=30)
    _alive_and_small(srv, rss)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1002  # protocol error: no extension agreed
    (upgrade,) = hostile.requests_seen.snapshot()
    assert not [k for k, _ in upgrade["headers"] if k.lower() == "sec-websocket-extensions"]


def test_websocket_message_over_the_cap_closes_with_1009(
    srv: SweptServer, hostile: Hostile, token: str, rss: RssWatch
) -> None:
    with _ws(srv, token, hostile.port, f"big={LIMIT // MiB + 4}") as ws, pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=30)
    _alive_and_small(srv, rss)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1009


# ---- HTTP/2 trailers --------------------------------------------------------------------------------


def _h2_request(
    tls: ssl.SSLSocket,
    authority: str,
    path: str,
    method: str = "GET",
    request_trailers: list[tuple[str, str]] | None = None,
) -> tuple[int, bytes, list[Any]]:
    """One HTTP/2 request (with `request_trailers`: a 2-byte body, then those trailers); (status, body,
    response trailers)."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    head = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
    conn.send_headers(sid, head, end_stream=request_trailers is None)
    if request_trailers is not None:
        conn.send_data(sid, b"hi")
        conn.send_headers(sid, request_trailers, end_stream=True)
    tls.sendall(conn.data_to_send())
    tls.settimeout(10)
    status, body, trailers = 0, bytearray(), []
    while True:
        data = tls.recv(65536)
        assert data, "connection closed"
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and ev.stream_id == sid:
                return status, bytes(body), trailers
        tls.sendall(conn.data_to_send())


@pytest.mark.parametrize(
    "path",
    ["/trailer?header=authorization", "/trailer-stream?header=authorization"],
    ids=["buffered", "streamed"],
)
def test_http2_trailers_are_redacted(srv: SweptServer, hostile: Hostile, token: str, path: str) -> None:
    target = f"api.upstream.test:{hostile.port}"
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["h2"])
        assert tls.selected_alpn_protocol() == "h2"
        status, body, trailers = _h2_request(tls, target, path)
    srv.sweep.record("h2 trailers", repr(trailers))
    assert status == 200 and body == b"ok"
    assert trailers == [(b"x-reflected", b"Bearer [REDACTED:BOMB_KEY]")]
    for form in value_forms(V["BOMB_KEY"]):
        assert form.encode() not in repr(trailers).encode()


def test_http2_trailers_cannot_forge_proxy_fields(srv: SweptServer, hostile: Hostile, token: str) -> None:
    """SPEC §14.6 on trailers: an upstream's `X-Agent-Vault-*` (and Proxy-Authenticate, Set-Cookie)
    trailer fields never reach the agent; other trailer fields do."""
    target = f"api.upstream.test:{hostile.port}"
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["h2"])
        assert tls.selected_alpn_protocol() == "h2"
        status, body, trailers = _h2_request(tls, target, "/forge-trailer")
    assert status == 200 and body == b"ok"
    assert trailers == [(b"x-fine", b"1")], trailers


def test_http2_request_trailers_cannot_carry_proxy_fields_upstream(
    srv: SweptServer, hostile: Hostile, token: str
) -> None:
    """SPEC §14.6 on request trailers: Proxy-Authorization, X-Vault, `X-Agent-Vault-*` and the header
    the proxy injects never reach the upstream, however the agent sends them; other fields do."""
    target = f"api.upstream.test:{hostile.port}"
    sent = [
        ("proxy-authorization", basic(token)),
        ("x-vault", "other"),
        ("x-agent-vault-note", "1"),
        ("authorization", "Bearer agent-chosen"),
        ("x-fine", "1"),
    ]
    with srv.raw() as conn:
        assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
        tls = conn.start_tls("api.upstream.test", srv.ca_bundle, alpn=["h2"])
        assert tls.selected_alpn_protocol() == "h2"
        status, _, _ = _h2_request(tls, target, "/sink?trailers=1", "POST", sent)
    assert status == 200
    seen = [r for r in hostile.requests_seen.snapshot() if r["path"] == "/sink?trailers=1"]
    assert len(seen) == 1 and seen[0]["http_version"] == "HTTP/2", seen
    assert seen[0]["trailers"] == [("x-fine", "1")], seen[0]["trailers"]
