"""`proxy/deadlines`: the timers behind SPEC §6 `upstream_timeout` never linger, never cut a stream that
moved on, and remember a cut handshake once (end-to-end behaviour: tests/e2e/test_upstream_timeouts.py)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from mitmproxy import connection

from agent_vault.proxy import deadlines, live
from agent_vault.proxy.deadlines import ConnectWatch, Deadlines, FirstByteWatch


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Deadlines, "connect", 0.05)
    monkeypatch.setattr(Deadlines, "first_byte", 0.05)


class _Stream:
    def __init__(self) -> None:
        self.waiting = True

    def awaiting(self) -> bool:
        return self.waiting


def test_first_byte_watch_cuts_only_a_stream_still_waiting(
    short: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    aborted: list[Any] = []
    monkeypatch.setattr(live, "abort_server", lambda cid, server: aborted.append((cid, server)))

    async def run() -> None:
        moved_on, stuck = _Stream(), _Stream()
        a, b = FirstByteWatch(), FirstByteWatch()
        a.update(moved_on.awaiting, "c1", "s1")
        b.update(stuck.awaiting, "c2", "s2")
        moved_on.waiting = False  # its head came but no event reached the watch: asked again at expiry
        await asyncio.sleep(0.15)
        assert aborted == [("c2", "s2")]
        assert not a.timed_out and b.timed_out

    asyncio.run(run())


def test_first_byte_watch_disarms_and_does_not_keep_the_stream_alive(
    short: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    aborted: list[Any] = []
    monkeypatch.setattr(live, "abort_server", lambda cid, server: aborted.append(cid))

    async def run() -> None:
        s = _Stream()
        w = FirstByteWatch()
        w.update(s.awaiting, "c1", "s1")
        s.waiting = False
        w.update(s.awaiting, "c1", "s1")  # the head came: the timer is cancelled
        other = _Stream()
        w2 = FirstByteWatch()
        w2.update(other.awaiting, "c2", "s2")
        del other  # the stream is gone: its timer holds it weakly and does nothing
        gc.collect()
        await asyncio.sleep(0.15)
        assert aborted == []

    asyncio.run(run())


def test_connect_watch_disarms_and_forgets(short: None, monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        w = ConnectWatch()
        plain = connection.Server(address=("127.0.0.1", 1))
        tls = connection.Server(address=("127.0.0.1", 2))
        tls.tls = True
        w.arm("c", plain)
        w.arm("c", tls)
        w.connected(plain)  # plain TCP: met
        w.connected(tls)  # a TLS handshake follows: still armed
        assert list(w._timers) == [tls.id]
        w.disarm(tls)  # tls_established_server
        assert w._timers == {}

    asyncio.run(run())


def test_connect_watch_cuts_a_hanging_handshake_and_remembers_it_once(
    short: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    aborted: list[str] = []
    monkeypatch.setattr(live, "abort_server", lambda cid, server: aborted.append(cid))

    class _Task:
        def done(self) -> bool:
            return False

    class _IO:
        handler = _Task()

    class _Handler:
        transports: dict[Any, Any] = {}

    handler = _Handler()
    monkeypatch.setattr(live, "handler_of", lambda cid: handler)

    async def run() -> None:
        w = ConnectWatch()
        server = connection.Server(address=("127.0.0.1", 3))
        server.tls = True
        server.state = connection.ConnectionState.OPEN  # TCP is up, TLS is not
        handler.transports[server] = _IO()
        w.arm("client-1", server)
        await asyncio.sleep(0.15)
        assert aborted == ["client-1"]
        assert w.cut_handshake("client-1") and not w.cut_handshake("client-1")

    asyncio.run(run())


def test_connect_watch_memory_of_cut_handshakes_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "abort_server", lambda cid, server: None)
    w = ConnectWatch()

    class _Task:
        def done(self) -> bool:
            return False

    server = connection.Server(address=("127.0.0.1", 4))
    server.tls = True
    server.state = connection.ConnectionState.OPEN
    monkeypatch.setattr(
        live,
        "handler_of",
        lambda cid: type("H", (), {"transports": {server: type("IO", (), {"handler": _Task()})()}})(),
    )
    for i in range(deadlines._EXPIRED_MAX + 50):
        w._expire(f"client-{i}", server)
    assert len(w._expired) == deadlines._EXPIRED_MAX
    assert not w.cut_handshake("client-0") and w.cut_handshake(f"client-{deadlines._EXPIRED_MAX + 49}")
