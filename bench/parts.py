"""The parts of a fast-path request outside the hooks, each alone, in process (issue #24).

    python bench/parts.py          # µs per request: the connection loop in memory, the audit writer

`loop`: one fast-path connection (`proxy/fast/session.Session`) serving keep-alive GETs with a JSON
answer: heads read and parsed as on the wire (h11 buffer, mitmproxy's parsers, llhttp), the flow
objects, `Exchange`'s steps, heads assembled -- with in-memory sides (no sockets, no TLS, no event-loop
wakeups) and hooks that do nothing. What is left of a request once the hooks (`bench/hooks.py`) and the
transport are taken away.

`writer`: the audit writer's CPU per proxy record on a real SQLite store (clean, canonical JSON, chain
hash, the batched insert and commit): work done on the writer thread, which the socket benchmarks count
in the proxy's CPU per request. Best of the rounds, as `bench/hooks.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from mitmproxy import connection, http, options
from mitmproxy.proxy.context import Context

from agent_vault.audit import AuditWriter, proxy_record
from agent_vault.proxy.fast.h1 import Reader
from agent_vault.proxy.fast.session import Session
from agent_vault.store import Store

REQUEST = (
    b"GET /echo HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Accept-Encoding: gzip\r\n\r\n"
)
BODY = b'{"authorization": "Bearer [REDACTED:API_TOKEN]", "path": "/echo"}' + b" " * 40
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 03:40:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
) % (len(BODY), BODY)


class _Agent:
    """The agent's side: `n` requests, one per read; counts what it is sent."""

    def __init__(self, n: int) -> None:
        self.left, self.received = n, 0

    async def read(self) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        return REQUEST

    def write(self, data: bytes) -> None:
        self.received += len(data)

    async def drain(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _Upstream:
    """A kept-alive upstream connection answering every read with one response."""

    def __init__(self) -> None:
        self.h1, self.closed, self.reusable, self.served = Reader(self), False, True, 0

    async def read(self) -> bytes:
        return RESPONSE

    def reusable_now(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _NoHooks:
    """The addon's surface as `Session`/`Exchange` use it, doing nothing."""

    def __init__(self) -> None:
        self.flows: dict[str, Any] = {}
        self.core = SimpleNamespace(settings=SimpleNamespace(max_buffered_bytes=1 << 25))

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def request(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def response_checked(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass

    def _finish(self, flow: http.HTTPFlow) -> None:
        pass


async def _loop_round(n: int) -> float:
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    agent, up = _Agent(n), _Upstream()
    hooks, side = cast(Any, _NoHooks()), cast(Any, agent)  # the surfaces Session uses, nothing more
    session = Session(hooks, Context(client, options.Options()), side, ("bench.local", 443), lambda: None)

    async def upstream() -> _Upstream:
        return up

    session._upstream = upstream  # type: ignore[assignment,method-assign]
    t0 = time.perf_counter()
    await session.run()
    elapsed = time.perf_counter() - t0
    assert agent.received == n * len(RESPONSE), "the loop did not relay every response as it came"
    return elapsed / n


def _record(i: int) -> dict[str, Any]:
    return proxy_record(
        actor="agent:bench",
        vault="default",
        decision="injected",
        scheme="https",
        host="bench.local",
        port=443,
        method="GET",
        path=f"/echo/{i}",
        service="bench",
        auth_type="bearer",
        injected_keys=["API_TOKEN"],
        redacted_keys=["API_TOKEN"],
        status=200,
        bytes_down=len(BODY),
        duration_ms=0.41,
        http_version="HTTP/1.1",
        served_by="fast",
    )


def _writer_rounds(n: int, rounds: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/bench.sqlite")
        writer = AuditWriter(store.engine, Path(tmp) / "audit.head")
        writer.start()
        out = []
        try:
            for _ in range(rounds):
                records = [_record(i) for i in range(n)]  # built outside the timed part
                c0 = time.process_time()  # the writer thread's CPU and ours (submit, then wait)
                for rec in records:
                    writer.submit(rec)
                writer.flush(120)
                out.append((time.process_time() - c0) / n)
        finally:
            writer.close()
            store.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000, help="requests (records) per round (default 10000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core, as the proxy under test
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    http.MessageData.__post_init__ = lambda self: None  # type: ignore[method-assign]  # as engine.install
    loop = sorted(asyncio.run(_loop_round(a.n)) * 1e6 for _ in range(a.rounds))
    print(f"loop (in memory, no-op hooks): best {loop[0]:.1f} us/request, median {loop[len(loop) // 2]:.1f}")
    writer = sorted(t * 1e6 for t in _writer_rounds(a.n, a.rounds))
    print(f"audit writer (SQLite): best {writer[0]:.1f} us CPU/record, median {writer[len(writer) // 2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
