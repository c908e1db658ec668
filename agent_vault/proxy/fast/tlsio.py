"""TLS over memory BIOs (pyOpenSSL, as the engine does it), for both sides of a fast-path connection.

The `SSL.Connection` comes from mitmproxy's TlsConfig addon (`tls_start_client` / `tls_start_server`):
the same leaf certificate, ciphers, versions, ALPN choice and upstream verification as the engine.
`TlsPump` only moves bytes: ciphertext in (`feed`), plaintext out (`plaintext`), plaintext in
(`encrypt`), ciphertext out. Raises `TlsFailed` (a message naming the cause, never data) on a failed
handshake or a broken record; `closed` is set by the peer's close_notify.

Per request, the successful calls go straight to OpenSSL through pyOpenSSL's own cffi binding
(`SSL_read`, `SSL_write`, `BIO_read`, `BIO_write`), skipping its wrappers' argument checks, per-call
64 KiB allocation and error probe on success; a failed read or write is handed to pyOpenSSL's own
`_raise_ssl_error`, which raises what the wrapper would have (WantRead, ZeroReturn, Error). Reads land
in a buffer per thread and are copied out at once: two connections never share bytes.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from mitmproxy import tls as _mtls

_engine_tls: Any = _mtls
SSL: Any = _engine_tls.SSL  # pyOpenSSL as the engine imports it (mitmproxy.tls)

READ_SIZE = 1 << 16
_lib: Any = getattr(SSL, "_lib", None)
_ffi: Any = getattr(SSL, "_ffi", None)
_MEM_DATA: Any = getattr(_lib, "BIO_get_mem_data", None)
_DIRECT = (
    all(hasattr(_lib, f) for f in ("SSL_read", "SSL_write", "SSL_pending", "BIO_read", "BIO_write"))
    and _ffi is not None
)
_scratch = threading.local()  # .buf: this thread's read buffer (READ_SIZE bytes)


def _buf() -> Any:
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = _ffi.new("char[]", READ_SIZE)
    return buf


def _buffered(bio: Any) -> int:
    """Bytes waiting in a memory BIO (-1: unknown). Asking first spares pyOpenSSL's WantReadError
    (an exception, ~2 us) on every empty read; pyOpenSSL keeps its BIOs in `_into_ssl`/`_from_ssl`."""
    if _MEM_DATA is None or bio is None:
        return -1
    return int(_MEM_DATA(bio, _ffi.NULL))


class TlsFailed(Exception):
    """A handshake or record failure; the message names the cause only."""


def _verify_error(conn: Any) -> str | None:
    """The engine's wording for a failed upstream certificate verification, or None."""
    result = SSL._lib.SSL_get_verify_result(conn._ssl)
    if result == 0:
        return None
    text = SSL._ffi.string(SSL._lib.X509_verify_cert_error_string(result)).decode()
    return f"Certificate verify failed: {text}"


class TlsPump:
    """One TLS endpoint on memory BIOs (see the module docstring)."""

    __slots__ = ("_from_bio", "_into_bio", "_ssl", "closed", "conn", "established")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.established = False
        self.closed = False
        # pyOpenSSL's SSL object and memory BIOs (private attributes; None: its wrappers only)
        self._into_bio, self._from_bio = getattr(conn, "_into_ssl", None), getattr(conn, "_from_ssl", None)
        self._ssl = getattr(conn, "_ssl", None) if _DIRECT and self._into_bio and self._from_bio else None

    def handshake(self) -> bool:
        """Advance the handshake; True once established."""
        if self.established:
            return True
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as e:
            raise TlsFailed(_verify_error(self.conn) or f"TLS handshake failed: {_cause(e)}") from None
        self.established = True
        return True

    def feed(self, data: bytes) -> None:
        """Ciphertext received from the peer."""
        if self._ssl is not None and type(data) is bytes and data:
            n = _lib.BIO_write(self._into_bio, data, len(data))
            if n == len(data):
                return
            data = data[n:] if n > 0 else data  # never (a memory BIO takes all): the wrapper says why
        self.conn.bio_write(data)

    def outgoing(self) -> bytes:
        """Ciphertext to send to the peer (handshake records, encrypted data, alerts)."""
        waiting = _buffered(self._from_bio)
        if waiting == 0:
            return b""
        if 0 < waiting <= READ_SIZE and self._ssl is not None:
            buf = _buf()
            n = _lib.BIO_read(self._from_bio, buf, waiting)
            if n > 0:
                return bytes(_ffi.buffer(buf, n)) + (self.outgoing() if n < waiting else b"")
        if waiting > 0:  # one read takes all a memory BIO holds
            return bytes(self.conn.bio_read(waiting))
        out = b""
        while True:  # size unknown: read until the BIO says it is empty
            try:
                chunk = self.conn.bio_read(READ_SIZE)
            except SSL.WantReadError:
                return out
            if not chunk:
                return out
            out += chunk

    def plaintext(self) -> bytes:
        """All plaintext decrypted so far (b"" when none)."""
        parts: list[bytes] = []
        while not self.closed:
            held = _lib.SSL_pending(self._ssl) if self._ssl is not None else self.conn.pending()
            if held == 0 and _buffered(self._into_bio) == 0:
                break  # no ciphertext left and no decrypted bytes held (no read-ahead: a record
                # is taken from the BIO only when SSL_read needs it), so a read would only fail
            try:
                if self._ssl is None:
                    parts.append(self.conn.recv(READ_SIZE))
                    continue
                buf = _buf()
                n = _lib.SSL_read(self._ssl, buf, READ_SIZE)
                if n > 0:
                    parts.append(bytes(_ffi.buffer(buf, n)))
                    continue
                self.conn._raise_ssl_error(self._ssl, n)  # what `recv` raises for this result
                break
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
            except SSL.Error as e:
                raise TlsFailed(f"TLS error: {_cause(e)}") from None
        return b"".join(parts)

    def encrypt(self, data: bytes) -> bytes:
        """Encrypt `data`; returns the ciphertext to send."""
        if data and self._ssl is not None and type(data) is bytes:
            n = _lib.SSL_write(self._ssl, data, len(data))
            if n <= 0:
                self.conn._raise_ssl_error(self._ssl, n)  # what `sendall` raises for this result
            if n < len(data):  # never (partial writes are off): the rest through the wrapper
                self.conn.sendall(data[max(n, 0) :])
        elif data:
            self.conn.sendall(data)
        return self.outgoing()

    def alpn(self) -> bytes | None:
        return self.conn.get_alpn_proto_negotiated() or None

    def shutdown(self) -> bytes:
        """A close_notify alert to send (best effort)."""
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()
        return self.outgoing()


def _cause(e: Exception) -> str:
    """The reason words of an OpenSSL error (library, function, reason); never payload bytes."""
    try:
        return str(e.args[0][-1][-1])
    except (IndexError, TypeError):
        return type(e).__name__
