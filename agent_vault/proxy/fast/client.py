"""The agent's side of a fast-path connection: its TLS (terminated with the engine's leaf certificate,
from mitmproxy's TlsConfig) on the client socket that mitmproxy accepted.

Ciphertext arrives through `push` (the socket's protocol, see `entry.ClientProtocol`) or, for bytes the
connection handler had already read, `deliver` (its read loop); plaintext leaves through `write`. The
inbox holds at most `INBOX_LIMIT` bytes: past it reading stops (the socket's reads are paused, or
`deliver` waits and with it the handler's read loop: TCP backpressure) until the session has read it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent_vault.metrics import Metrics
from agent_vault.proxy.fast.tlsio import TlsFailed, TlsPump

INBOX_LIMIT = 1 << 18
log = logging.getLogger("agent_vault.proxy")
#: mitmproxy's wording for a client that hung up before its ClientHello was whole: no handshake to fail
_NOT_A_HANDSHAKE = "connection closed early"


def _printable(text: str, limit: int) -> str:
    """Wire text fit for one log line: control characters replaced, length bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def client_tls_failed(metrics: Metrics | None, sni: str | bytes | None, reason: str) -> None:
    """A client's TLS handshake with the proxy failed, usually because it does not trust the agent-vault
    CA (SPEC §13): one warning line naming the SNI and the cause, and the `client_tls` error count.
    Both paths call it (the engine's `tls_failed_client` hook, the fast path's `ClientSide`). Never
    raises; carries no token (a handshake precedes every request) and no header."""
    try:
        if reason == _NOT_A_HANDSHAKE:
            return
        name = sni.decode("ascii", "replace") if isinstance(sni, bytes) else sni
        log.warning(
            "client TLS handshake failed for %s: %s (does the client trust the agent-vault CA? "
            "see 'agent-vault ca fetch')",
            _printable(name, 255) if name else "(no SNI)",
            _printable(reason.removeprefix("TLS handshake failed: "), 300) or "unknown cause",
        )
        if metrics is not None:
            metrics.client_tls_failed()
    except Exception as e:  # bookkeeping must never break the connection's teardown
        log.error("client TLS failure not recorded: %s", type(e).__name__)


class ClientSide:
    """Plaintext in and out of the agent's TLS connection."""

    def __init__(
        self, pump: TlsPump, writer: Any, activity: Callable[[], None], metrics: Metrics | None = None
    ) -> None:
        self.pump, self.writer, self.activity = pump, writer, activity
        self.metrics = metrics  # the `client_tls` count of a failed handshake (None: log only)
        self.inbox = bytearray()
        self.eof = False
        self.failed: str | None = None  # a TLS failure: the session ends
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._pause: Callable[[], None] | None = None  # the socket's pause_reading (`attach`)
        self._resume: Callable[[], None] | None = None
        self._paused = False

    def attach(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Ciphertext is now pushed by the socket's protocol: past the limit `push` pauses the socket's
        reads, and `read` resumes them once the session has taken the inbox."""
        self._pause, self._resume = pause, resume

    def push(self, data: bytes) -> None:
        """`take`, from the socket's protocol; pauses reading while the inbox is over its limit."""
        self.take(data)
        self.activity()
        if self._pause is not None and not self._paused and len(self.inbox) > INBOX_LIMIT:
            self._paused = True
            self._pause()

    def take(self, data: bytes) -> None:
        """Ciphertext from the agent (no waiting): handshake, decrypt into the inbox."""
        try:
            self.pump.feed(data)
            if not self.pump.handshake():
                self._send_raw(self.pump.outgoing())
                return
            self.inbox += self.pump.plaintext()
            self._send_raw(self.pump.outgoing())
        except TlsFailed as e:
            self.failed = str(e)
            self._send_raw(self.pump.outgoing())  # the alert, if any
            if not self.pump.established:
                self._handshake_failed()
        if self.pump.closed:
            self.eof = True
        self._ready.set()

    def _handshake_failed(self) -> None:
        """Log and count the failed handshake as the engine's `tls_failed_client` hook does."""
        try:
            sni = self.pump.conn.get_servername()
        except Exception:  # the SNI is only for the log line
            sni = None
        client_tls_failed(self.metrics, sni, self.failed or "")

    async def deliver(self, data: bytes) -> None:
        """`take`, then wait while the inbox is over its limit (backpressure)."""
        self.take(data)
        while len(self.inbox) > INBOX_LIMIT and not self.eof and self.failed is None:
            self._drained.clear()
            await self._drained.wait()

    def closed(self) -> None:
        """The agent closed its side."""
        self.eof = True
        self._ready.set()
        self._drained.set()

    async def read(self) -> bytes:
        """The next plaintext from the agent; b"" at end of stream or after a TLS failure."""
        while not self.inbox:
            if self.eof or self.failed is not None:
                return b""
            self._ready.clear()
            await self._ready.wait()
        data = bytes(self.inbox)
        self.inbox.clear()
        self._drained.set()
        if self._paused and self._resume is not None:
            self._paused = False
            self._resume()
        return data

    def _send_raw(self, ciphertext: bytes) -> None:
        if ciphertext and not self.writer.is_closing():
            self.writer.write(ciphertext)

    def write(self, data: bytes) -> None:
        """Send plaintext to the agent (encrypted)."""
        if not self.writer.is_closing():
            self.writer.write(self.pump.encrypt(data))
            self.activity()

    async def drain(self) -> None:
        await self.writer.drain()
        self.activity()

    def shutdown(self) -> None:
        """Send close_notify (best effort) before the socket is closed."""
        self._send_raw(self.pump.shutdown())
