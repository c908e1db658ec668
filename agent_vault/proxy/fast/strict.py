"""The strict request-head gate both paths apply (issue #24): llhttp, the C parser behind `httptools`.

The engine's own parser (mitmproxy `read_request_head`) has already accepted the head: it checks the
request line, and the body framing (CL+TE, duplicate or invalid Content-Length, unknown
Transfer-Encoding). llhttp then checks every header field strictly: obs-fold (continuation lines),
invalid field-name bytes, whitespace before the colon. A head it refuses is answered 400 on both
paths (`engine` calls this too), so the paths never disagree. The request line is not llhttp's to
judge (it refuses methods it does not know, e.g. `PURGE`-like extensions or lower case), and bare LF
line ends are accepted as the engine accepts them: both are normalised before the check.
"""

from __future__ import annotations

import re

import httptools

_BARE_LF = re.compile(rb"(?<!\r)\n")


class _Sink:
    """httptools wants a callback object; the gate only wants its errors."""


def head_end(buf: bytes) -> int:
    """The end of the first head in `buf` as the engine's buffer finds it (`\\n\\r?\\n`), or -1."""
    m = re.search(rb"\n\r?\n", buf)
    return m.end() if m else -1


def request_head_ok(raw_head: bytes) -> bool:
    """False if llhttp refuses the header fields of this (engine-accepted) request head."""
    _, _, fields = raw_head.lstrip(b"\r\n").partition(b"\n")
    p = httptools.HttpRequestParser(_Sink())
    try:
        if fields.count(b"\n") != fields.count(b"\r\n"):  # bare LF line ends, as the engine accepts
            fields = _BARE_LF.sub(b"\r\n", fields)
        p.feed_data(b"GET / HTTP/1.1\r\n" + fields)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError:
        return False
    return True
