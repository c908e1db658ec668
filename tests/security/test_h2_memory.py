"""Hostile HTTP/2 peers must not grow the server's memory without a bound (SPEC §5.8, §5.10).

* A slow (or hostile) HTTP/2 agent that never opens its flow-control window while a fast upstream
  sends a large body: the proxy stops reading that upstream once its send queue toward the agent is
  full (backpressure), so its RSS stays flat; when the agent reads at last, it gets the whole body
  intact. Upstream over HTTP/1.1 and over HTTP/2.
* One HTTP/2 connection sending request after request that the proxy refuses itself (403 at the
  request head, with and without a request body): each refused stream's state is freed when its
  stream ends, so the RSS does not grow with the number of streams.
* An HTTP/2 upstream that keeps its flow-control window at 0 while an agent uploads as fast as it can:
  the proxy stops reading the agent once its send queue toward that upstream is full (backpressure),
  instead of queueing the whole upload (up to --max-request-bytes).

A watchdog (`RssWatch`) SIGKILLs the server (our own child, by pid) if its RSS explodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trustme
from helpers.proxy import basic
from helpers.raw_tls import RawTLSServer
from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse, download_payload
from security.conftest import Sweep, SweptServer, proxy_error, start_server
from security.test_adversarial_bombs import RssWatch

MiB = 1 << 20
LIMIT = 8 * MiB  # the server's --max-buffered-bytes
FLOOD = 192 * MiB  # what the fast upstream sends
MAX_GROWTH = 64 * MiB
PIECE = 64 << 10


class Fast(TLSUpstream):
    """`/flood?bytes=N`: N bytes of `download_payload` without a length, as fast as the proxy reads
    them; `sent` counts what the proxy has taken so far (the writer drains after every piece)."""

    sent = 0

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.path == "/flood":
            return UpstreamResponse(
                200, [("Content-Type", "application/octet-stream")], self._flood(int(req.params["bytes"]))
            )
        return await super().handle(req)

    async def _flood(self, total: int) -> AsyncIterator[bytes]:
        self.sent = 0
        while self.sent < total:
            piece = download_payload(min(PIECE, total - self.sent), self.sent)
            self.sent += len(piece)
            yield piece
            await asyncio.sleep(0)


@pytest.fixture(scope="module", params=["h1-upstream", "h2-upstream"])
def fast(request: pytest.FixtureRequest, upstream_ca: trustme.CA) -> Iterator[Fast]:
    with Fast(ca=upstream_ca, http2=request.param == "h2-upstream") as u:
        yield u


@pytest.fixture(scope="module")
def refusing(upstream_ca: trustme.CA) -> Iterator[Fast]:
    """An upstream for requests the proxy refuses at the head (never contacted: one kind is enough)."""
    with Fast(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, sweep: Sweep
) -> Iterator[SweptServer]:
    args = ("--max-buffered-bytes", str(LIMIT), "--rate-limits", "off")
    yield from start_server(tmp_path_factory, upstream_ca, sweep, "h2mem", extra_args=args)


@pytest.fixture(scope="module")
def token(srv: SweptServer) -> str:
    srv.set_credential("H2MEM_KEY", srv.sweep.value("H2MEM_KEY"))
    return srv.make_agent("h2mem-bot")


@pytest.fixture
def rss(srv: SweptServer) -> Iterator[RssWatch]:
    assert srv.proc is not None
    w = RssWatch(srv.proc.pid)
    yield w
    w.growth()


_added: set[str] = set()


def _service(srv: SweptServer, name: str, host: str, port: int, **extra: object) -> None:
    """A service (once per name and upstream port) injecting H2MEM_KEY."""
    name = f"{name}-{port}"
    if name not in _added:
        _added.add(name)
        auth = {"type": "bearer", "token": "H2MEM_KEY"}
        srv.add_service({"name": name, "host": host, "port": port, "auth": auth, **extra})


def _h2_tls(srv: SweptServer, token: str, target: str) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    conn = srv.raw()
    assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
    tls = conn.start_tls(target.rsplit(":", 1)[0], srv.ca_bundle, alpn=["h2"])
    assert tls.selected_alpn_protocol() == "h2"
    h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    h2c.initiate_connection()
    tls.sendall(h2c.data_to_send())
    return tls, h2c


def _headers(method: str, authority: str, path: str) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]


def _still_answers(srv: SweptServer, token: str, port: int) -> None:
    assert srv.alive(), "the server died"
    _service(srv, "fast", "api.upstream.test", port)
    with srv.agent_client(token) as c:
        r = c.get(f"https://api.upstream.test:{port}/echo/after")
    assert r.status_code == 200, r.text


# ---- a slow agent and a fast upstream -------------------------------------------------------------


def test_slow_h2_agent_gets_backpressure_not_a_growing_buffer(
    srv: SweptServer, fast: Fast, token: str, rss: RssWatch
) -> None:
    _service(srv, "fast", "api.upstream.test", fast.port)
    target = f"api.upstream.test:{fast.port}"
    tls, h2c = _h2_tls(srv, token, target)
    with tls:
        sid = h2c.get_next_available_stream_id()
        h2c.send_headers(sid, _headers("GET", target, f"/flood?bytes={FLOOD}"), end_stream=True)
        tls.sendall(h2c.data_to_send())
        # The agent reads nothing: its stream window (64 KiB) closes at once.
        last, still_since, end = -1, time.monotonic(), time.monotonic() + 20
        while time.monotonic() < end and fast.sent < FLOOD and rss.peak - rss.base < MAX_GROWTH:
            time.sleep(0.1)
            if fast.sent != last:
                last, still_since = fast.sent, time.monotonic()
            elif time.monotonic() - still_since > 1.5:
                break  # the upstream is held back
        growth = rss.growth()
        assert not rss.killed, "the server's RSS exploded (killed by the watchdog)"
        assert growth < MAX_GROWTH, (
            f"server RSS grew by {growth / MiB:.0f} MiB ({fast.sent / MiB:.0f} MiB read)"
        )
        assert fast.sent < FLOOD, "the proxy read the whole upstream body although the agent read nothing"
        _still_answers(srv, token, fast.port)

        # The agent reads at last: the whole body arrives, intact (nothing was dropped).
        tls.settimeout(20)
        digest, got, ended, status = hashlib.sha256(), 0, False, 0
        while not ended:
            data = tls.recv(1 << 20)
            assert data, "connection closed"
            for ev in h2c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    digest.update(ev.data)
                    got += len(ev.data)
                    h2c.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and ev.stream_id == sid:
                    ended = True
            tls.sendall(h2c.data_to_send())
    assert status == 200
    assert got == FLOOD
    assert digest.hexdigest() == hashlib.sha256(download_payload(FLOOD)).hexdigest()


# ---- refused streams on one connection ---------------------------------------------------------------

WARM_UP = 1_500  # streams refused before the RSS is watched (allocator and caches settle)
REFUSED = 10_000  # streams refused on one connection, watched
REFUSED_GROWTH = 16 * MiB  # measured: ~0.1-2 MiB now; ~42 MiB (3.5 KiB a stream) when streams were kept

Answer = tuple[int, dict[bytes, bytes], bytes]


def _refused_batch(
    tls: ssl.SSLSocket, h2c: h2.connection.H2Connection, target: str, n: int, with_body: bool
) -> Answer:
    """Send `n` requests the proxy refuses at the head (64 in flight), each answered with 403; the
    first answer is returned."""
    done = sent = 0
    first: Answer | None = None
    window: dict[int, tuple[int, dict[bytes, bytes], bytearray]] = {}
    while done < n:
        while sent < n and sent - done < 64:
            sid = h2c.get_next_available_stream_id()
            h2c.send_headers(
                sid, _headers("POST" if with_body else "GET", target, f"/x/{sent}"), not with_body
            )
            if with_body:
                h2c.send_data(sid, b"b" * 200, end_stream=True)
            window[sid] = (0, {}, bytearray())
            sent += 1
        tls.sendall(h2c.data_to_send())
        data = tls.recv(1 << 20)
        assert data, f"connection closed after {done} answers"
        for ev in h2c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                hd = dict(ev.headers)
                window[ev.stream_id] = (int(hd[b":status"]), hd, window[ev.stream_id][2])
            elif isinstance(ev, h2.events.DataReceived):
                window[ev.stream_id][2].extend(ev.data)
                h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                status, hd, body = window.pop(ev.stream_id)
                first = first or (status, hd, bytes(body))
                assert status == 403, (status, bytes(body)[:200])
                done += 1
        tls.sendall(h2c.data_to_send())
    assert first is not None
    return first


@pytest.mark.parametrize("with_body", [False, True], ids=["get", "post-with-body"])
def test_refused_h2_streams_are_freed(srv: SweptServer, refusing: Fast, token: str, with_body: bool) -> None:
    fast = refusing
    assert srv.proc is not None
    _service(srv, "read-only", "other.upstream.test", fast.port, methods=["HEAD"])
    target = f"other.upstream.test:{fast.port}"
    tls, h2c = _h2_tls(srv, token, target)
    with tls:
        tls.settimeout(15)
        status, hd, body = _refused_batch(tls, h2c, target, WARM_UP, with_body)
        rss = RssWatch(srv.proc.pid)
        _refused_batch(tls, h2c, target, REFUSED, with_body)
        growth = rss.growth()  # measured while the connection is still open
    proxy_error(status, {k.decode(): v.decode() for k, v in hd.items()}, body, "method_not_allowed")
    assert not rss.killed, "the server's RSS exploded (killed by the watchdog)"
    assert growth < REFUSED_GROWTH, f"server RSS grew by {growth / MiB:.1f} MiB for {REFUSED} refused streams"
    _still_answers(srv, token, fast.port)


# ---- an upload toward an HTTP/2 upstream whose window stays closed ---------------------------------


class ClosedWindow:
    """A hostile HTTP/2 upstream (written with `h2`): its SETTINGS give every stream a flow-control
    window of 0 and it never sends WINDOW_UPDATE, so no request body can ever be sent to it. It never
    answers; `requests` counts the requests it saw, `received` the body bytes that reached it anyway
    (what a client may send before it sees the SETTINGS)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.requests = self.received = 0
        self.server = RawTLSServer(ca, self.handle, alpn=("h2",))
        self.port = self.server.port

    def handle(self, tls: ssl.SSLSocket) -> None:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        tls.sendall(conn.data_to_send())
        while data := tls.recv(1 << 16):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.requests += 1
                elif isinstance(ev, h2.events.DataReceived):
                    self.received += len(ev.data)  # never acknowledged: the window stays closed
            tls.sendall(conn.data_to_send())


@pytest.fixture(scope="module")
def closed_window(upstream_ca: trustme.CA) -> Iterator[ClosedWindow]:
    c = ClosedWindow(upstream_ca)
    with c.server:
        yield c
    assert not c.server.errors, c.server.errors


def test_upload_to_a_closed_h2_window_gets_backpressure_not_a_growing_queue(
    srv: SweptServer, closed_window: ClosedWindow, refusing: Fast, token: str, rss: RssWatch
) -> None:
    _service(srv, "window0", "api.upstream.test", closed_window.port)
    target = f"api.upstream.test:{closed_window.port}"
    tls, h2c = _h2_tls(srv, token, target)
    with tls:
        sid = h2c.get_next_available_stream_id()
        h2c.send_headers(sid, _headers("POST", target, "/upload"), end_stream=False)
        tls.sendall(h2c.data_to_send())
        tls.settimeout(10)
        while h2c.local_flow_control_window(sid) < FLOOD:  # the proxy's SETTINGS + WINDOW_UPDATE
            for ev in h2c.receive_data(tls.recv(1 << 16)):
                assert not isinstance(ev, h2.events.ResponseReceived | h2.events.StreamReset), ev
            tls.sendall(h2c.data_to_send())
        # The agent uploads as fast as the proxy reads; the upstream takes nothing.
        tls.settimeout(1.5)
        sent, piece = 0, bytes(PIECE)
        try:
            while sent < FLOOD and rss.peak - rss.base < MAX_GROWTH:
                h2c.send_data(sid, piece)
                tls.sendall(h2c.data_to_send())
                sent += PIECE
        except TimeoutError:
            pass  # the proxy stopped reading this connection
        growth = rss.growth()
        assert not rss.killed, "the server's RSS exploded (killed by the watchdog)"
        assert growth < MAX_GROWTH, f"server RSS grew by {growth / MiB:.0f} MiB ({sent / MiB:.0f} MiB taken)"
        assert sent < FLOOD, "the proxy read the whole upload although the upstream took nothing"
        assert closed_window.requests == 1 and closed_window.received <= 65535, vars(closed_window)
        _still_answers(srv, token, refusing.port)


def test_a_large_h2_upload_is_held_back_and_let_go_again(srv: SweptServer, fast: Fast, token: str) -> None:
    """The other side of that backpressure: an upload several times the cap, to an upstream that opens
    its window as it reads, arrives whole (the agent's reads are held and resumed, never stalled)."""
    _service(srv, "fast", "api.upstream.test", fast.port)
    body = b"u" * (4 * MiB)
    with srv.agent_client(token, http2=True) as c:
        r = c.post(f"https://api.upstream.test:{fast.port}/echo/upload", content=body)
    assert r.status_code == 200 and r.http_version == "HTTP/2", r.text[:200]
    assert r.json()["body_length"] == len(body)
    assert hashlib.sha256(r.json()["body"].encode()).digest() == hashlib.sha256(body).digest()
