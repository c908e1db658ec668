"""`proxy/bodyreader`: a chunk-size line or trailers that never end cannot grow a buffer without bound
(both paths read HTTP/1 bodies with these readers: the engine through `engine.install`, the fast path
directly)."""

from __future__ import annotations

import pytest

from agent_vault.proxy import engine
from agent_vault.proxy.bodyreader import MAX_BODY_LINE, h11, make_body_reader
from agent_vault.proxy.engine_compat import _http1
from agent_vault.proxy.fast.h1 import ReceiveBuffer


def _buf(data: bytes) -> object:
    b = ReceiveBuffer()
    b += data
    return b


def test_a_chunk_size_line_over_the_cap_is_refused() -> None:
    reader = make_body_reader(None)  # chunked
    buf = _buf(b"1;" + b"e" * (MAX_BODY_LINE // 2))
    assert reader(buf) is None  # under the cap: wait for more, as h11 does
    buf += b"e" * MAX_BODY_LINE  # type: ignore[operator]
    with pytest.raises(h11.RemoteProtocolError):
        reader(buf)


def test_endless_trailers_are_refused() -> None:
    reader = make_body_reader(None)
    buf = _buf(b"3\r\nabc\r\n0\r\n")
    assert bytes(reader(buf).data) == b"abc"
    buf += b"X-Trailer: " + b"t" * (MAX_BODY_LINE + 1)  # type: ignore[operator]
    with pytest.raises(h11.RemoteProtocolError):
        while reader(buf) is not None:
            pass


def test_big_chunks_and_lengths_still_flow() -> None:
    """Body data is handed out as it arrives: a large chunk or Content-Length body never trips the cap."""
    big = b"d" * (4 * MAX_BODY_LINE)
    chunked = make_body_reader(None)
    buf = _buf(b"%x\r\n" % len(big) + big)
    got = chunked(buf)
    assert isinstance(got, h11.Data) and bytes(got.data) == big
    fixed = make_body_reader(len(big))
    got = fixed(_buf(big))
    assert isinstance(got, h11.Data) and len(got.data) == len(big)


def test_the_engine_uses_the_capped_readers() -> None:
    mine = engine._saved is None  # another test of this process may have the engine installed
    engine.install()
    try:
        assert _http1.make_body_reader is make_body_reader
    finally:
        if mine:
            engine.uninstall()
            assert _http1.make_body_reader is not make_body_reader


def test_empty_websocket_frames_count_against_the_message_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message reassembled from empty frames costs a list entry per frame: each frame counts
    `FRAME_COST` bytes, so a stream of them is closed with 1009 instead of growing without bound."""
    import wsproto.events
    from wsproto import ConnectionType

    monkeypatch.setattr(engine.BoundedWebsocketConnection, "max_message", 100 * engine.FRAME_COST)
    ws = engine.BoundedWebsocketConnection(ConnectionType.SERVER, conn=None)
    mask = b"\x01\x02\x03\x04"
    first = b"\x02\x80" + mask  # binary, not final, empty, masked (a client's frame)
    ws.receive_data(first + (b"\x00\x80" + mask) * 500)  # 500 empty continuation frames
    events = list(ws.events())
    closes = [e for e in events if isinstance(e, wsproto.events.CloseConnection)]
    assert closes and closes[0].code == 1009
    assert len(events) < 200  # stopped near the limit, not after all 500 frames
