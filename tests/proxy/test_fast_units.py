"""Units of the HTTP/1.1 fast path (issue #24): which connections go lean, the strict head gate both
paths share, the TLS pump, message reading as the engine reads, and the fail-closed boundary."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme
from mitmproxy import connection, http, options
from mitmproxy.proxy.context import Context

from agent_vault.proxy.fast import strict
from agent_vault.proxy.fast.entry import lean_hello
from agent_vault.proxy.fast.h1 import BodyBroken, HeadRefused, Reader
from agent_vault.proxy.fast.session import Session
from agent_vault.proxy.fast.tlsio import SSL, TlsFailed, TlsPump


def eligible(data: bytes, offer_h2: bool = True) -> bool:
    return lean_hello(data, offer_h2) is not None


def _client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="example.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize(
    ("alpn", "lean"),
    [
        (["http/1.1"], True),
        (["h2", "http/1.1"], False),
        (["http/1.1", "h2"], False),
        (None, False),
        (["h2"], False),
    ],
)
def test_only_http11_alpn_clients_go_lean(alpn: list[str] | None, lean: bool) -> None:
    assert eligible(_client_hello(alpn)) is lean


@pytest.mark.parametrize(
    ("alpn", "lean"),
    [
        (["http/1.1"], True),
        (["h2", "http/1.1"], True),
        (["http/1.1", "h2"], True),
        (None, False),
        (["h2"], False),
    ],
)
def test_with_offer_h2_off_clients_offering_http11_go_lean(alpn: list[str] | None, lean: bool) -> None:
    assert eligible(_client_hello(alpn), offer_h2=False) is lean  # the proxy will pick http/1.1


def test_partial_or_garbage_hello_stays_on_the_engine() -> None:
    hello = _client_hello(["http/1.1"])
    assert not eligible(hello[:20])
    assert not eligible(b"GET / HTTP/1.1\r\n\r\n")
    assert not eligible(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")


@pytest.mark.parametrize(
    ("head", "ok"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"get /x HTTP/1.1\r\nHost: x\r\n\r\n", True),  # the request line is the engine's to judge
        (b"PURGE /x HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\nHost: x\n\n", True),  # bare LF: accepted as the engine accepts it
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", False),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", False),
    ],
)
def test_strict_gate(head: bytes, ok: bool) -> None:
    assert strict.request_head_ok(head) is ok


def test_head_end_matches_the_engine_buffer() -> None:
    assert strict.head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest") == len(b"GET / HTTP/1.1\r\nA: b\r\n\r\n")
    assert strict.head_end(b"GET / HTTP/1.1\nA: b\n\nrest") == len(b"GET / HTTP/1.1\nA: b\n\n")
    assert strict.head_end(b"GET / HTTP/1.1\r\n") == -1


class _Src:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


async def _collect(r: Reader, size: int | None) -> bytes:
    return b"".join([c async for c in r.body(size)])


def test_reader_pipelined_heads_and_bodies() -> None:
    async def go() -> None:
        r = Reader(
            _Src(
                b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            )
        )
        got = await r.request_head()
        assert got is not None and got[0].path == "/a" and got[1] is None
        assert await _collect(r, None) == b"hello"
        got = await r.request_head()
        assert got is not None and got[0].path == "/b" and got[1] == 0
        assert await r.request_head() is None

    asyncio.run(go())


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n", 400),
        (b"\x00garbage\r\n\r\n", 400),
    ],
)
def test_reader_refuses_what_the_engine_refuses(data: bytes, status: int) -> None:
    async def go() -> None:
        r = Reader(_Src(data))
        with pytest.raises(HeadRefused) as e:
            await r.request_head()
        assert e.value.status == status

    asyncio.run(go())


@pytest.mark.parametrize(
    ("body", "size"),
    [(b"zz\r\nhello\r\n0\r\n\r\n", None), (b"5\r\nhel", None), (b"abc", 10)],
    ids=["bad-chunk-size", "cut-chunk", "short-length"],
)
def test_reader_broken_bodies(body: bytes, size: int | None) -> None:
    async def go() -> None:
        r = Reader(_Src(body))
        with pytest.raises(BodyBroken):
            await _collect(r, size)

    asyncio.run(go())


def _handshaken(upstream_ca: trustme.CA) -> tuple[TlsPump, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A server-side pump and a stdlib client, handshake done over memory BIOs."""
    leaf = upstream_ca.issue_cert("localhost")
    sctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    with leaf.private_key_and_cert_chain_pem.tempfile() as pem:
        sctx.use_certificate_chain_file(pem)
        sctx.use_privatekey_file(pem)
    server_conn = SSL.Connection(sctx)
    server_conn.set_accept_state()
    pump = TlsPump(server_conn)
    cctx = ssl.create_default_context()
    upstream_ca.configure_trust(cctx)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(inc, out, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump.feed(out.read())
            pump.handshake()
            inc.write(pump.outgoing())
    pump.feed(out.read())
    assert pump.handshake()
    return pump, client, inc, out


def test_tls_pump_moves_bodies_larger_than_its_buffer_and_refuses_a_forged_record(
    upstream_ca: trustme.CA,
) -> None:
    """Plaintext and ciphertext over 64 KiB (several records, more than one read buffer) arrive whole
    and in order both ways; a record that does not authenticate ends the connection with TlsFailed."""
    pump, client, inc, out = _handshaken(upstream_ca)
    up = bytes(range(256)) * 1200  # 300 KiB
    client.write(up)
    pump.feed(out.read())
    assert pump.plaintext() == up
    down = b"".join(i.to_bytes(4, "big") for i in range(80_000))  # 312 KiB
    inc.write(pump.encrypt(down))
    got = b""
    while len(got) < len(down):
        got += client.read(1 << 20)
    assert got == down
    client.write(b"x" * 100)
    record = bytearray(out.read())
    record[-5] ^= 0x01  # flip a bit of the authentication tag
    pump.feed(bytes(record))
    with pytest.raises(TlsFailed):
        pump.plaintext()


def test_tls_pump_round_trip_and_close(upstream_ca: trustme.CA) -> None:
    leaf = upstream_ca.issue_cert("localhost")
    sctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    with leaf.private_key_and_cert_chain_pem.tempfile() as pem:
        sctx.use_certificate_chain_file(pem)
        sctx.use_privatekey_file(pem)
    server_conn = SSL.Connection(sctx)
    server_conn.set_accept_state()
    pump = TlsPump(server_conn)
    cctx = ssl.create_default_context()
    upstream_ca.configure_trust(cctx)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(inc, out, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump.feed(out.read())
            pump.handshake()
            inc.write(pump.outgoing())
    pump.feed(out.read())  # the client's Finished
    assert pump.handshake() and pump.established
    client.write(b"hello")
    pump.feed(out.read())
    assert pump.plaintext() == b"hello"
    inc.write(pump.encrypt(b"world"))
    assert client.read() == b"world"
    with pytest.raises(ssl.SSLWantReadError):
        client.unwrap()
    pump.feed(out.read())
    assert pump.plaintext() == b"" and pump.closed


class _Side:
    def __init__(self, data: bytes) -> None:
        self.src = _Src(data)
        self.out = b""

    async def read(self) -> bytes:
        return await self.src.read()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _BrokenAddon:
    """An addon whose decision raises: the lean loop must answer 502 and forward nothing."""

    def __init__(self) -> None:
        self.flows: dict[str, Any] = {}
        self.finished: list[http.HTTPFlow] = []
        self.egress = None

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        raise RuntimeError("boom with a secret-looking value sk-123")

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def _finish(self, flow: http.HTTPFlow) -> None:
        self.finished.append(flow)


def test_fail_closed_502_and_close() -> None:
    async def go() -> tuple[_Side, _BrokenAddon, list[bool]]:
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
        ctx = Context(client, options.Options())
        side = _Side(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        addon = _BrokenAddon()
        closed: list[bool] = []
        sess = Session(addon, ctx, side, ("example.com", 443), lambda: closed.append(True))  # type: ignore[arg-type]
        await sess.run()
        return side, addon, closed

    side, addon, closed = asyncio.run(go())
    assert side.out.startswith(b"HTTP/1.1 502 ")
    assert b'"internal"' in side.out and b"sk-123" not in side.out
    assert side.out.count(b"HTTP/1.1") == 1  # the pipelined second request was never served
    assert closed == [True] and len(addon.finished) == 1


def test_flag_from_env_and_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_vault.config import env_settings
    from agent_vault.errors import InvalidRequest

    monkeypatch.delenv("AGENT_VAULT_FAST_PATH", raising=False)  # fastpath-diff sets it per session
    assert env_settings().fast_path is True  # on by default (issue 24)
    monkeypatch.setenv("AGENT_VAULT_FAST_PATH", "off")
    assert env_settings().fast_path is False
    assert env_settings(fast_path="on").fast_path is True  # the option wins over the env
    monkeypatch.setenv("AGENT_VAULT_FAST_PATH", "on")
    assert env_settings(fast_path="off").fast_path is False
    monkeypatch.setenv("AGENT_VAULT_FAST_PATH", "yes")
    with pytest.raises(InvalidRequest, match="invalid AGENT_VAULT_FAST_PATH: must be on or off"):
        env_settings()  # one line naming the variable (not pydantic's text)
    monkeypatch.delenv("AGENT_VAULT_FAST_PATH")
    monkeypatch.delenv("AGENT_VAULT_OFFER_H2", raising=False)
    assert env_settings().offer_h2 is True  # h2 offered by default (SPEC §5.1)
    monkeypatch.setenv("AGENT_VAULT_OFFER_H2", "off")
    assert env_settings().offer_h2 is False
    assert env_settings(offer_h2="on").offer_h2 is True


class _PlainPump:
    """A TLS pump stand-in that passes bytes through (handshake done)."""

    closed = False

    def feed(self, data: bytes) -> None:
        self.data = data

    def handshake(self) -> bool:
        return True

    def plaintext(self) -> bytes:
        data, self.data = self.data, b""
        return data

    def outgoing(self) -> bytes:
        return b""


class _Writer:
    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass


def test_client_side_pauses_socket_reads_past_the_inbox_limit_until_the_session_reads() -> None:
    from agent_vault.proxy.fast.client import INBOX_LIMIT, ClientSide

    events: list[str] = []
    side = ClientSide(_PlainPump(), _Writer(), lambda: events.append("activity"))  # type: ignore[arg-type]
    side.attach(lambda: events.append("pause"), lambda: events.append("resume"))
    side.push(b"a" * INBOX_LIMIT)  # at the limit: reading goes on
    assert events == ["activity"]
    side.push(b"b")
    side.push(b"c")  # paused once, not twice
    assert events == ["activity", "activity", "pause", "activity"]
    assert len(asyncio.run(side.read())) == INBOX_LIMIT + 2
    assert events[-1] == "resume"


def test_client_protocol_hands_everything_but_data_to_the_handlers_protocol() -> None:
    from agent_vault.proxy.fast.entry import ClientProtocol

    calls: list[Any] = []

    class Inner:
        def eof_received(self) -> bool:
            calls.append("eof")
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            calls.append(("lost", exc))

        def pause_writing(self) -> None:
            calls.append("pause_writing")

        def resume_writing(self) -> None:
            calls.append("resume_writing")

    pushed: list[bytes] = []
    side: Any = type("S", (), {"push": lambda self, d: pushed.append(d)})()
    proto = ClientProtocol(Inner(), side)
    proto.data_received(b"ciphertext")
    assert pushed == [b"ciphertext"] and calls == []  # data never reaches the handler's StreamReader
    assert proto.eof_received() is True
    proto.pause_writing()
    proto.resume_writing()
    err = ConnectionResetError()
    proto.connection_lost(err)
    assert calls == ["eof", "pause_writing", "resume_writing", ("lost", err)]
