"""HTTP/1 body readers that refuse to wait forever for a line (both paths; hostile peers).

mitmproxy's HTTP/1 layer (and the fast path, which reads bodies with the same readers) calls h11's body
readers directly, which bypasses h11's own cap on an incomplete event: a peer that sends a chunk-size
line, or trailers, that never end grew the buffer without bound (an unauthenticated client after its
407, or an upstream at line rate). `make_body_reader` wraps mitmproxy's readers with `MAX_BODY_LINE`.
"""

from __future__ import annotations

from typing import Any

from agent_vault.proxy.engine_compat import _http1

_engine_h1: Any = _http1
h11: Any = _engine_h1.h11
MAX_BODY_LINE = 64 << 10  # a chunk-size line, or the trailers, longer than this: refused


class _CappedBodyReader:
    """An h11 body reader that refuses to wait forever for a line. Body data is handed out as it arrives,
    so a reader that still needs more with over `MAX_BODY_LINE` bytes buffered is waiting for the end of
    a chunk-size line or of the trailers: a peer that never ends one would grow the buffer without
    bound (h11's own cap is bypassed: mitmproxy calls the readers directly). Raises h11's
    RemoteProtocolError, which both paths already turn into a closed connection."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, buf: Any) -> Any:
        ev = self._inner(buf)
        if ev is None and len(buf) > MAX_BODY_LINE:
            raise h11.RemoteProtocolError("a chunk-size or trailer line is over the limit")
        return ev

    def read_eof(self) -> Any:
        return self._inner.read_eof()


_make_body_reader: Any = _engine_h1.make_body_reader  # mitmproxy's, as imported (before any install)


def make_body_reader(expected_size: int | None) -> _CappedBodyReader:
    """mitmproxy's body reader for `expected_size`, capped (see `_CappedBodyReader`); the engine's too
    (`engine.install` puts it in mitmproxy's HTTP/1 layer)."""
    return _CappedBodyReader(_make_body_reader(expected_size))
