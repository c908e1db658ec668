#!/usr/bin/env python3
"""The floor for issue #24: the least a Python TLS-intercepting proxy can do on this machine.

    python bench/relay.py PORT CERT KEY UPSTREAM_CA SECRET

A forward proxy with asyncio and the standard library's `ssl`: it answers CONNECT, terminates the
agent's TLS with CERT/KEY, opens TLS to the CONNECT target (verified with UPSTREAM_CA), and for each
HTTP/1.1 request adds `Authorization: Bearer SECRET` after the request line and relays the exchange
(bodies framed by Content-Length only, in 64 KiB pieces). Nothing else: no authentication, audit,
redaction, limits, strict parsing or header hygiene. bench/run.py measures it beside agent-vault
(the "relay floor" column) so the fast path's cost reads against what transport alone costs here;
the issue's own 200-line relay ran at 50 µs per request. A benchmark tool only: never use it as a proxy.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

PIECE = 1 << 16


def _length(head: bytes) -> int | None:
    """Content-Length of a head, 0 if absent, None if the body is framed any other way."""
    n = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            n = int(value)
    return n


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        piece = await reader.readexactly(min(n, PIECE))
        writer.write(piece)
        await writer.drain()
        n -= len(piece)


class Relay:
    def __init__(self, cert: str, key: str, upstream_ca: str, secret: str) -> None:
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(cert, key)
        self.client_ctx = ssl.create_default_context(cafile=upstream_ca)
        self.header = b"Authorization: Bearer " + secret.encode() + b"\r\n"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up: asyncio.StreamWriter | None = None
        try:
            connect = await reader.readuntil(b"\r\n\r\n")
            host, _, port = connect.split(b" ", 2)[1].decode().rpartition(":")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self.server_ctx)
            ureader, up = await asyncio.open_connection(
                host, int(port), ssl=self.client_ctx, server_hostname=host
            )
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = _length(head)
                if size is None:
                    return
                line_end = head.index(b"\r\n") + 2
                up.write(head[:line_end] + self.header + head[line_end:])
                await _copy(reader, up, size)
                rhead = await ureader.readuntil(b"\r\n\r\n")
                rsize = _length(rhead)
                if rsize is None:
                    return
                writer.write(rhead)
                await _copy(ureader, writer, rsize)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            if up is not None:
                up.close()
            writer.close()


async def main(argv: list[str]) -> None:
    port, cert, key, upstream_ca, secret = argv
    relay = Relay(cert, key, upstream_ca, secret)
    server = await asyncio.start_server(relay.serve, "127.0.0.1", int(port), backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
