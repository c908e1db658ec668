"""The upstream side of a fast-path connection: dialled at the address the SSRF guard checked, TLS
configured by mitmproxy's TlsConfig (`tls_start_server`: the same trust bundle, verification, SNI
and ALPN as the engine), then HTTP/1.1 plaintext through a `TlsPump`.

`open_upstream` resolves and checks the target with the same `Egress` as the engine's pinning (no
DNS-rebinding window: the checked IP is dialled, SNI and verification use the target name). Failures
raise `UpstreamFailed` with the engine's wording (for `answers.upstream_error`); a refusal by the
guard raises the AgentVaultError itself. Reads and writes are bounded by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib

from mitmproxy import connection, ctx, tls
from mitmproxy.proxy.context import Context

from agent_vault.proxy.fast.h1 import Reader
from agent_vault.proxy.fast.tlsio import TlsFailed, TlsPump
from agent_vault.proxy.ssrf import Egress

READ_SIZE = 1 << 16


class UpstreamFailed(Exception):
    """Connecting or talking to the upstream failed; the message names the cause (engine wording)."""


class Upstream:
    """One open, TLS-established upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pump: TlsPump) -> None:
        self.reader, self.writer, self.pump = reader, writer, pump
        self.closed = False
        self.reusable = True  # False once the upstream asked to close after this response
        self.served = 0  # responses completed on this connection
        self.h1 = Reader(self)

    async def read(self) -> bytes:
        """The next plaintext; b"" at end of stream (FIN or close_notify)."""
        while True:
            data = self.pump.plaintext()
            out = self.pump.outgoing()
            if out:
                self.writer.write(out)
            if data:
                return data
            if self.pump.closed:
                return b""
            try:
                raw = await self.reader.read(READ_SIZE)
            except OSError as e:
                raise UpstreamFailed(f"Server connection error: {e.strerror or 'reset'}") from None
            if not raw:
                return b""
            self.pump.feed(raw)

    def reusable_now(self) -> bool:
        """Fit for another request: open, not asked to close, and no FIN or stray bytes since."""
        r = self.reader
        return not self.closed and self.reusable and not r.at_eof() and not r._buffer  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        self.writer.write(self.pump.encrypt(data))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as e:
            raise UpstreamFailed(f"Server connection error: {e.strerror or 'reset'}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()


async def open_upstream(egress: Egress, context: Context, host: str, port: int) -> Upstream:
    """Dial `host:port` (checked and pinned by `egress`), TLS-verified for `host`."""
    ip = await egress.address(host, port)
    try:
        reader, writer = await asyncio.open_connection(ip, port)
    except OSError as e:
        raise UpstreamFailed(f"Connect call failed: {e.strerror or 'connection refused'}") from None
    server = connection.Server(address=(ip, port))
    server.sni = host
    server.alpn_offers = tuple(x for x in context.client.alpn_offers if x != b"h2")
    tctx = Context(context.client, context.options)
    tctx.server = server
    data = tls.TlsData(server, tctx)
    ctx.master.addons.get("tlsconfig").tls_start_server(data)  # type: ignore[no-untyped-call]
    if data.ssl_conn is None:
        writer.transport.abort()
        raise UpstreamFailed("TLS handshake failed: no TLS configuration")
    data.ssl_conn.set_connect_state()
    pump = TlsPump(data.ssl_conn)
    up = Upstream(reader, writer, pump)
    try:
        while not pump.handshake():
            out = pump.outgoing()
            if out:
                writer.write(out)
                await writer.drain()
            raw = await reader.read(READ_SIZE)
            if not raw:
                raise UpstreamFailed("TLS handshake failed: the server closed the connection")
            pump.feed(raw)
        out = pump.outgoing()
        if out:
            writer.write(out)
        if pump.alpn() not in (None, b"http/1.1"):
            raise UpstreamFailed(f"TLS handshake failed: unexpected ALPN {pump.alpn()!r}")
    except TlsFailed as e:
        up.close()
        raise UpstreamFailed(str(e)) from None
    except (OSError, UpstreamFailed) as e:
        up.close()
        if isinstance(e, UpstreamFailed):
            raise
        raise UpstreamFailed(f"TLS handshake failed: {e.strerror or 'connection reset'}") from None
    except BaseException:
        with contextlib.suppress(Exception):
            up.close()
        raise
    return up
