"""Bounded, incremental decoding of HTTP content codings (SPEC §5.9). Pure: no mitmproxy.

A hostile upstream can send a few hundred bytes that inflate to gigabytes ("decompression bomb").
Every decoder here produces its output in steps of at most `STEP` bytes and counts it: once the
total would pass `limit`, it raises `DecodedTooLarge` without producing (or holding) more than
`limit + 1` decoded bytes in all. gzip/x-gzip and deflate use zlib's `max_length` +
`unconsumed_tail`, br uses brotli's `output_buffer_limit` + `can_accept_more_data()`, zstd uses
`ZstdDecompressor.decompress(data, max_length)` + `needs_input`. Concatenated gzip members and zstd
frames are decoded in sequence; bytes after the end of a deflate or br stream are ignored (never
forwarded). Malformed input raises `CorruptEncoding` (the codec's message is dropped).
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterator

import brotli  # type: ignore[import-untyped]

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - the standard library has it from 3.14
    from backports import zstd

#: Content codings this module decodes (lower case).
SUPPORTED = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
#: Largest piece of output one decompression step may produce.
STEP = 256 << 10

Room = Callable[[], int]


class DecodedTooLarge(Exception):
    """The decoded body would be larger than `limit_bytes`."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"decoded body over {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class CorruptEncoding(ValueError):
    """The body is not valid data of its content coding."""


class _Zlib:
    """gzip (and zlib-wrapped data labelled gzip) or deflate (zlib-wrapped or raw)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._d: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until the wrapper can be told apart

    def _new(self, data: bytes) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
        cmf, flg = data[0], data[1]
        zlib_wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and ((cmf << 8) | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)

    def pull(self, data: bytes, room: Room) -> Iterator[bytes]:
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            self._d = self._new(data)
        d, buf = self._d, data
        while True:
            if d.eof:
                rest = d.unused_data + buf
                if not (self._gzip and rest):
                    return  # the end, or bytes after a deflate stream: ignored, never forwarded
                d = self._d = self._new(rest)  # the next gzip member
                buf = rest
            n = room()
            out = d.decompress(buf, n)
            buf = d.unconsumed_tail
            if out:
                yield out
            if not buf and len(out) < n and not d.eof:
                return


class _Brotli:
    def __init__(self) -> None:
        self._b = brotli.Decompressor()

    def pull(self, data: bytes, room: Room) -> Iterator[bytes]:
        b = self._b
        if b.is_finished():
            return  # bytes after the end of the stream: ignored
        buf = data
        while True:
            out: bytes = b.process(buf, output_buffer_limit=room())
            buf = b""
            if out:
                yield out
            if b.is_finished() or b.can_accept_more_data():
                return


class _Zstd:
    def __init__(self) -> None:
        self._z = zstd.ZstdDecompressor()

    def pull(self, data: bytes, room: Room) -> Iterator[bytes]:
        z, buf = self._z, data
        while True:
            if z.eof:
                rest = z.unused_data + buf
                if not rest:
                    return
                z = self._z = zstd.ZstdDecompressor()  # the next frame
                buf = rest
            out = z.decompress(buf, room())
            buf = b""
            if out:
                yield out
            if z.needs_input and not z.eof:
                return


_ERRORS = (zlib.error, brotli.error, zstd.ZstdError, EOFError)


class Decoder:
    """Incremental decoder of one content coding with a hard cap on its total output.

    `feed(data)` returns the decoded bytes available so far; raises `DecodedTooLarge` when the
    total output would pass `limit`, `CorruptEncoding` on malformed input. `total` counts the
    decoded bytes returned.
    """

    __slots__ = ("_codec", "encoding", "limit", "total")

    def __init__(self, encoding: str, limit: int) -> None:
        enc = encoding.strip().lower()
        if enc not in SUPPORTED:
            raise ValueError(f"unsupported content coding {enc!r}")
        self.encoding = enc
        self.limit = limit
        self.total = 0
        self._codec: _Zlib | _Brotli | _Zstd
        if enc in ("gzip", "x-gzip", "deflate"):
            self._codec = _Zlib(gzip=enc != "deflate")
        elif enc == "br":
            self._codec = _Brotli()
        else:
            self._codec = _Zstd()

    def _room(self) -> int:
        return max(1, min(STEP, self.limit - self.total + 1))

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            for piece in self._codec.pull(data, self._room):
                self.total += len(piece)
                if self.total > self.limit:
                    out.clear()
                    raise DecodedTooLarge(self.limit)
                out.append(piece)
        except _ERRORS:
            raise CorruptEncoding(f"malformed {self.encoding} data") from None
        return b"".join(out)


def decoder(encoding: str, limit: int) -> Decoder | None:
    """A bounded incremental decoder for `encoding`, or None if it is not supported."""
    enc = encoding.strip().lower()
    return Decoder(enc, limit) if enc in SUPPORTED else None


def decode(encoding: str, data: bytes, limit: int) -> bytes:
    """Decode a whole body (at most `limit` decoded bytes; see `Decoder.feed` for the errors)."""
    return Decoder(encoding, limit).feed(data)
