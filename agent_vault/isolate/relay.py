"""The relay of `vault run --isolate`: connections accepted on listeners made inside the sandbox are piped
to fixed TCP targets outside (the proxy, the control API). Nothing else is reachable from the sandbox.

Bounded against a hostile child: at most `max_connections` open pairs (more are closed at once), reads of
at most `CHUNK` bytes, and a write waits for the other side to drain before the next read (backpressure),
so each pair holds at most a few chunks. One asyncio loop in one daemon thread; `stop()` closes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256

Target = tuple[str, int]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (CONNECT tunnels rely on half-close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


class Relay:
    """Start with `start([(listening_socket, (host, port)), ...])`; `stop()` is idempotent."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self.active = 0
        self.refused = 0
        self.errors = 0
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._on_error)
        self._thread = threading.Thread(target=self._loop.run_forever, name="isolate-relay", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _on_error(self, _loop: asyncio.AbstractEventLoop, _context: dict[str, object]) -> None:
        """Counted, never printed: a failure closes one connection and must not spill onto the terminal."""
        self.errors += 1

    def start(self, routes: list[tuple[socket.socket, Target]]) -> Relay:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(routes), self._loop)
        fut.result(timeout=10)
        return self

    async def _listen(self, routes: list[tuple[socket.socket, Target]]) -> None:
        for sock, target in routes:

            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, t: Target = target) -> None:
                with contextlib.suppress(asyncio.CancelledError):  # stop(): asyncio 3.12.1 would print
                    await self._serve(r, w, t)  # a traceback for a cancelled connection callback

            self._servers.append(await asyncio.start_server(handle, sock=sock, limit=CHUNK))

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter, target: Target) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            cw.close()
            return
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        uw: asyncio.StreamWriter | None = None
        try:
            ur, up = await asyncio.wait_for(asyncio.open_connection(*target, limit=CHUNK), CONNECT_TIMEOUT_S)
            uw = up
            await asyncio.gather(_pipe(cr, up), _pipe(ur, cw))
        except Exception:  # any failure (a refused target included) closes this pair only
            self.errors += 1
        finally:
            self.active -= 1
            for w in (cw, uw):
                if w is not None:
                    w.close()
            if task is not None:
                self._tasks.discard(task)

    async def _close(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
