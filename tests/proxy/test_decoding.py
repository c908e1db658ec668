"""Bounded incremental decoding (agent_vault/proxy/decoding.py): exact output for ordinary bodies
however they are chunked, and a hard cap on the output of bombs, with the memory that proves it."""

from __future__ import annotations

import gzip
import os
import sys
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import brotli  # type: ignore[import-untyped]
import pytest

from agent_vault.proxy import decoding
from agent_vault.proxy.decoding import CorruptEncoding, DecodedTooLarge, Decoder, decode

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover
    from backports import zstd

MiB = 1 << 20
BODY = b"".join(b"line %d: %s\n" % (i, os.urandom(8).hex().encode()) for i in range(5000))


def _deflate(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": lambda d: _deflate(d, zlib.MAX_WBITS),  # zlib-wrapped (RFC 9110)
    "raw-deflate": lambda d: _deflate(d, -zlib.MAX_WBITS),  # what some servers send as "deflate"
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def _coding(name: str) -> str:
    return "deflate" if name == "raw-deflate" else name


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 30])
def test_decodes_exactly_however_chunked(name: str, size: int) -> None:
    d = Decoder(_coding(name), 10 * MiB)
    out = b"".join(d.feed(c) for c in _chunks(ENCODERS[name](BODY), size))
    assert out == BODY and d.total == len(BODY)


def test_concatenated_gzip_members_and_zstd_frames() -> None:
    assert decode("gzip", gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10), MiB) == b"a" * 10 + b"b" * 10
    two = zstd.compress(b"x" * 100) + zstd.compress(b"y" * 100)
    d = Decoder("zstd", MiB)
    assert b"".join(d.feed(c) for c in _chunks(two, 3)) == b"x" * 100 + b"y" * 100


def test_limit_is_inclusive_and_one_byte_more_raises() -> None:
    for name in ENCODERS:
        data = ENCODERS[name](BODY)
        assert decode(_coding(name), data, len(BODY)) == BODY
        with pytest.raises(DecodedTooLarge) as e:
            decode(_coding(name), data, len(BODY) - 1)
        assert e.value.limit_bytes == len(BODY) - 1


def _zeros_bomb(name: str, mib: int) -> bytes:
    """`mib` MiB of zeros, compressed chunk by chunk (never materialised)."""
    zero = bytes(MiB)
    if name == "br":
        b = brotli.Compressor(quality=1)
        return b"".join(b.process(zero) for _ in range(mib)) + b.finish()
    if name == "zstd":
        z = zstd.ZstdCompressor(level=1)
        return b"".join(z.compress(zero) for _ in range(mib)) + z.flush()
    c = zlib.compressobj(1, zlib.DEFLATED, 31 if name == "gzip" else zlib.MAX_WBITS)
    return b"".join(c.compress(zero) for _ in range(mib)) + c.flush()


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_bomb_stops_at_the_cap_without_materialising_it(name: str) -> None:
    bomb = _zeros_bomb(name, 256)  # 256 MiB of zeros in (at most) a few hundred KiB
    assert len(bomb) < 2 * MiB
    limit = 4 * MiB
    tracemalloc.start()
    try:
        d = Decoder(name, limit)
        with pytest.raises(DecodedTooLarge):
            for c in _chunks(bomb, 64 << 10):
                d.feed(c)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.total <= limit + decoding.STEP
    assert peak < 3 * limit, peak  # the output so far (at most the cap) and one step, never the bomb


def test_whole_body_bomb_in_one_feed() -> None:
    bomb = _zeros_bomb("br", 1024)
    with pytest.raises(DecodedTooLarge):
        decode("br", bomb, MiB)


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_corrupt_input_raises_corrupt_encoding(name: str) -> None:
    with pytest.raises(CorruptEncoding):
        decode(name, b"\x1f\x8b\x08\x00garbage-garbage-garbage" * 4 if name == "gzip" else b"\xff" * 64, MiB)


def test_truncated_stream_yields_its_prefix_and_trailing_bytes_are_ignored() -> None:
    data = gzip.compress(BODY)
    assert BODY.startswith(decode("gzip", data[: len(data) // 2], 10 * MiB))
    assert decode("deflate", _deflate(b"hello world", zlib.MAX_WBITS) + b"junk", MiB) == b"hello world"


def test_unsupported_coding() -> None:
    assert decoding.decoder("compress", MiB) is None
    assert decoding.decoder(" GZIP ", MiB) is not None
    with pytest.raises(ValueError):
        Decoder("identity", MiB)
