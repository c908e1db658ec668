"""Response redaction (SPEC §5.9): replace injected values with `[REDACTED:KEY]`, also across the
chunk boundaries of a streamed body. Pure: no mitmproxy. Danger: holds secret bytes; never log them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache


def _compile(secrets: Iterable[tuple[str, bytes]]) -> tuple[re.Pattern[bytes] | None, dict[bytes, str]]:
    """The pattern over `secrets` and value -> key name; the same secrets reuse one compiled pattern
    (every request to a service redacts the same values). Callers must not mutate the dict."""
    return _compiled(tuple(secrets))


@lru_cache(maxsize=64)  # bounded; holds values the snapshot holds anyway (a rotation ages them out)
def _compiled(secrets: tuple[tuple[str, bytes], ...]) -> tuple[re.Pattern[bytes] | None, dict[bytes, str]]:
    keys: dict[bytes, str] = {}
    for key, value in secrets:
        if value and value not in keys:
            keys[value] = key
    if not keys:
        return None, keys
    # Longest first: at one position the longest secret wins, as the reference semantics require.
    alternatives = sorted(keys, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(s) for s in alternatives)), keys


@lru_cache(maxsize=256)  # bounded; the values are the snapshot's (a rotation ages them out)
def value_forms(value: str) -> tuple[bytes, ...]:
    """The byte forms of an injected `value` that redaction replaces: the raw UTF-8 bytes, then the inside
    of a JSON string holding it as echoes write it (`json.dumps` escapes, non-ASCII as is or as `\\u`
    escapes, `/` as `\\/` or not). Only forms that differ are added: a plain token has one."""
    raw = value.encode("utf-8", "surrogateescape")
    out = [raw]
    for ascii_only in (True, False):
        inside = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        for form in (inside, inside.replace("/", "\\/")):
            try:
                b = form.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate outside surrogateescape's range
                continue
            if b not in out:
                out.append(b)
    return tuple(out)


def _marker(key: str) -> bytes:
    return b"[REDACTED:" + key.encode("ascii", "replace") + b"]"


class StreamRedactor:
    """Incremental redaction of a byte stream.

    Output equals `redact_bytes` over the whole stream however it is chunked: leftmost occurrence
    first, the longest secret at one position, each replaced by `[REDACTED:KEY]`. `feed` holds back
    only the longest buffered suffix that is a proper prefix of some secret, so SSE events are not
    delayed. It redacts every secret it is given; filtering short values is the caller's job
    (`Injection.secrets` already does). Danger: a secret that is a substring of a marker such as
    `[REDACTED:KEY]` would reappear in the output; credential values of 8+ characters are not that.
    """

    __slots__ = ("_buf", "_keys", "_multi", "_pattern", "redacted_keys")

    def __init__(self, secrets: Sequence[tuple[str, bytes]]) -> None:
        self._pattern, self._keys = _compile(secrets)
        self._multi = tuple((s, s[:1]) for s in self._keys if len(s) > 1)
        self._buf = b""
        self.redacted_keys: set[str] = set()

    def _repl(self, m: re.Match[bytes]) -> bytes:
        key = self._keys[m.group(0)]
        self.redacted_keys.add(key)
        return _marker(key)

    def _holdback(self, buf: bytes) -> int:
        """Start of the longest suffix of `buf` that is a proper prefix of a secret (len(buf) if none)."""
        n = best = len(buf)
        for s, first in self._multi:
            i = buf.find(first, max(0, n - len(s) + 1))
            while i != -1 and i < best:
                if buf.startswith(s[: n - i], i):
                    best = i
                    break
                i = buf.find(first, i + 1)
        return best

    def feed(self, chunk: bytes) -> bytes:
        """Return the redacted bytes that can be released now; keep the undecidable tail."""
        if self._pattern is None:
            return chunk
        buf = self._buf + chunk if self._buf else chunk
        out: list[bytes] = []
        while True:
            hold = self._holdback(buf)
            pos = 0
            # `in` is a fast C scan; the regex (slower over large chunks) runs only when needed.
            matches = self._pattern.finditer(buf) if any(s in buf for s in self._keys) else ()
            for m in matches:
                if m.start() >= hold:
                    break
                out.append(buf[pos : m.start()])
                out.append(self._repl(m))
                pos = m.end()
            if pos <= hold:
                if pos == 0 and hold == len(buf):
                    self._buf = b""
                    return buf if not out else b"".join(out) + buf
                out.append(buf[pos:hold])
                self._buf = buf[hold:]
                return b"".join(out)
            buf = buf[pos:]  # a match ran past the old hold-back point: re-decide the rest

    def flush(self) -> bytes:
        """Release everything still held (end of stream)."""
        buf, self._buf = self._buf, b""
        if self._pattern is None or not buf:
            return buf
        return self._pattern.sub(self._repl, buf)


def redact_bytes(data: bytes, secrets: Sequence[tuple[str, bytes]]) -> tuple[bytes, set[str]]:
    """Replace every occurrence of each secret with `[REDACTED:KEY]`; returns (data, keys redacted)."""
    found: set[str] = set()
    if not contains_secret(data, secrets):  # a fast C scan; the regex is compiled only on a hit
        return data, found
    pattern, keys = _compile(secrets)
    if pattern is None:
        return data, found

    def repl(m: re.Match[bytes]) -> bytes:
        found.add(keys[m.group(0)])
        return _marker(keys[m.group(0)])

    return pattern.sub(repl, data), found


def contains_secret(data: bytes, secrets: Sequence[tuple[str, bytes]]) -> bool:
    """True if any secret occurs in `data` (the cheap test before redacting)."""
    return any(value and value in data for _, value in secrets)


def redact_text(text: str, secrets: Sequence[tuple[str, bytes]]) -> tuple[str, set[str]]:
    """`redact_bytes` for a header value (UTF-8 with surrogateescape, as mitmproxy decodes headers)."""
    out, found = redact_bytes(text.encode("utf-8", "surrogateescape"), secrets)
    return (out.decode("utf-8", "surrogateescape") if found else text), found


# --- header hygiene (SPEC §5.7) ---------------------------------------------------------------------
