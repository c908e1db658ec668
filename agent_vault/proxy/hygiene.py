"""Header hygiene (SPEC §5.7): what must not cross the proxy, removed in place from a request's or a
response's headers (hop-by-hop fields, fields named in Connection, proxy credentials, X-Vault,
`X-Agent-Vault-*`, and, when asked, Set-Cookie).

Works on mitmproxy's `Headers` (one pass over the raw fields), on the fast path's indexed headers (by
index key, the index kept) and on any case-insensitive `MutableMapping[str, str]`. No mitmproxy import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, MutableMapping
from typing import Any


def is_multidict(headers: object) -> bool:
    """mitmproxy's `Headers` (raw `fields` tuple), as opposed to a plain mapping."""
    return isinstance(getattr(headers, "fields", None), tuple)


def remove_header(headers: MutableMapping[str, str], name: str) -> None:
    low = name.lower()
    for k in [k for k in headers if k.lower() == low]:
        headers.pop(k, None)


HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_FRAMING = frozenset({"transfer-encoding", "content-length"})
_NEVER_BY_CONNECTION = frozenset({"host"})


def _tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for t in ", ".join(values).split(",") if t.strip()}


@functools.lru_cache(maxsize=256)
def _always_removed(extra: frozenset[str], keep_framing: bool) -> frozenset[str]:
    """Hop-by-hop and `extra` names, less the framing headers when they are kept (per request, cached)."""
    return (HOP_BY_HOP | extra) - (_FRAMING if keep_framing else frozenset())


@functools.lru_cache(maxsize=256)
def _removed_keys(extra: frozenset[str], keep_framing: bool) -> frozenset[bytes] | None:
    """`_always_removed` as index keys (ASCII lower-case bytes); None if a name is not ASCII (only the
    general path compares such names as mitmproxy does, latin-1 lower-cased)."""
    names = _always_removed(extra, keep_framing)
    return frozenset(n.encode() for n in names) if all(n.isascii() for n in names) else None


def _strip_indexed(headers: Any, extra: Collection[str], keep_framing: bool) -> bool:
    """The fast path's common case, on index keys: no TE field, and a Connection field (if any) of
    ASCII tokens that do not name `upgrade` (no websocket handshake to keep). An index key is the name
    ASCII-lower-cased, and latin-1 text lower-cases no non-ASCII letter to ASCII, so comparing keys to
    ASCII names is the general path's comparison. False: not this case (the general path runs)."""
    keys = headers.index_keys()
    if b"te" in keys:
        return False
    removed = _removed_keys(frozenset(extra), keep_framing)
    if removed is None:
        return False
    if b"connection" in keys:
        named = headers.get_all("connection")
        if not all(v.isascii() for v in named):
            return False
        tokens = _tokens(named)
        if "upgrade" in tokens:
            return False
        by_connection = tokens - _NEVER_BY_CONNECTION - (_FRAMING if keep_framing else frozenset())
        if by_connection:
            removed = removed | {t.encode() for t in by_connection}
    gone = [k for k in keys if k in removed or k.startswith(b"x-agent-vault-")]
    if gone:
        headers.drop_keys(gone)
    return True


def _removal(
    lows: list[str], values: Callable[[str], list[str]], extra: Collection[str], keep_framing: bool
) -> tuple[frozenset[str], bool]:
    """(lower-case names to remove, is a websocket handshake) for headers named `lows`."""
    connection = _tokens(values("connection")) if "connection" in lows else set()
    websocket = "upgrade" in connection and "upgrade" in lows and "websocket" in _tokens(values("upgrade"))
    remove = _always_removed(frozenset(extra), keep_framing)
    if connection:
        remove = remove | (connection - _NEVER_BY_CONNECTION - (_FRAMING if keep_framing else frozenset()))
    if websocket:
        # Extensions (permessage-deflate) are never negotiated through the proxy: it reads every
        # message, and an inflated message is a bomb a few bytes on the wire can set off.
        remove = (remove - {"upgrade", "connection"}) | {"sec-websocket-extensions"}
    return remove, websocket


def _strip_fields(headers: Any, extra: Collection[str], keep_framing: bool) -> None:
    """`_strip` over mitmproxy's raw `Headers.fields` in one pass (every Mapping lookup on them
    is a scan of all fields); the fields are replaced only if something is removed. Headers with a
    name index (the fast path's) are asked for their names and drop fields by name, keeping the index."""
    if hasattr(headers, "index_keys") and _strip_indexed(headers, extra, keep_framing):
        return
    fields: tuple[tuple[bytes, bytes], ...] = headers.fields
    indexed: dict[bytes, str] | None = headers.index_names() if hasattr(headers, "index_names") else None
    lows = list(indexed.values()) if indexed is not None else [n.decode("latin-1").lower() for n, _ in fields]

    def values(name: str) -> list[str]:
        return [v.decode("latin-1") for n, v in fields if n.decode("latin-1").lower() == name]

    remove, websocket = _removal(lows, values, extra, keep_framing)
    if "te" in lows and ", ".join(values("te")).strip().lower() == "trailers":
        remove = remove - {"te"}
    if indexed is not None and not websocket:
        gone = [k for k, low in indexed.items() if low in remove or low.startswith("x-agent-vault-")]
        if gone:
            headers.drop_keys(gone)
        return
    if indexed is not None:  # `lows` has one entry per name there; a websocket handshake needs one per field
        lows = [n.decode("latin-1").lower() for n, _ in fields]
    kept = [
        f
        for f, low in zip(fields, lows, strict=True)
        if not (low in remove or low.startswith("x-agent-vault-"))
    ]
    if websocket:
        kept = [f for f in kept if f[0].lower() != b"connection"] + [(b"Connection", b"Upgrade")]
    if len(kept) != len(fields) or websocket:
        headers.fields = tuple(kept)


def _strip(headers: MutableMapping[str, str], extra: Collection[str], keep_framing: bool) -> None:
    if is_multidict(headers):
        return _strip_fields(headers, extra, keep_framing)
    keys = list(headers)  # one pass: every lookup on mitmproxy's Headers is a scan of all fields
    lows = [k.lower() for k in keys]

    def values(name: str) -> list[str]:
        return [headers[k] for k, low in zip(keys, lows, strict=True) if low == name]

    remove, websocket = _removal(lows, values, extra, keep_framing)
    for k, low in zip(keys, lows, strict=True):
        if low in remove or low.startswith("x-agent-vault-"):
            if low == "te" and headers[k].strip().lower() == "trailers":
                continue
            del headers[k]
    if websocket:
        remove_header(headers, "connection")
        headers["Connection"] = "Upgrade"


REQUEST_ONLY = frozenset({"proxy-authorization", "proxy-connection", "x-vault"})  # never to an upstream
RESPONSE_ONLY = frozenset({"proxy-authenticate", "set-cookie", "set-cookie2"})  # never from a trailer


def strip_trailers(trailers: MutableMapping[str, str], names: Collection[str]) -> None:
    """Trailer fields (HTTP/2, sent after the hooks) with `names`, `X-Agent-Vault-*`, every hop-by-hop
    or framing field and every field a Connection field names removed, in place: a trailer must not
    carry what the head may not (SPEC §14.6)."""
    lows = {k.lower() for k in trailers}
    remove = HOP_BY_HOP | _FRAMING | {n.lower() for n in names}
    if "connection" in lows:
        remove |= _tokens(v for k, v in trailers.items() if k.lower() == "connection") - _NEVER_BY_CONNECTION
    for low in lows:
        if low in remove or low.startswith("x-agent-vault-"):
            remove_header(trailers, low)


def strip_request_headers(
    headers: MutableMapping[str, str], injected_names: Collection[str] = (), *, keep_framing: bool = True
) -> None:
    """Remove what must not reach the upstream (SPEC §5.7), in place.

    Removes Proxy-Authorization, Proxy-Connection, X-Vault, `X-Agent-Vault-*`, hop-by-hop headers
    (Connection, Keep-Alive, TE unless exactly `trailers`, Trailer, Transfer-Encoding, Upgrade unless a
    websocket handshake), every header named in Connection, and `injected_names`. A websocket
    handshake keeps `Upgrade`, gets `Connection: Upgrade` and loses `Sec-WebSocket-Extensions`
    (no compression through the proxy). With `keep_framing` (default)
    Transfer-Encoding and Content-Length are kept: mitmproxy needs them to frame the body and rewrites
    them for the wire itself; pass False only for a message you frame yourself.
    """
    extra = REQUEST_ONLY | {n.lower() for n in injected_names}
    _strip(headers, extra, keep_framing)


def strip_response_headers(
    headers: MutableMapping[str, str], strip_set_cookie: bool, *, keep_framing: bool = True
) -> None:
    """Remove hop-by-hop headers, Proxy-Authenticate, `X-Agent-Vault-*` (an upstream must not forge a
    proxy error) and, if asked, Set-Cookie, in place. `keep_framing` as in `strip_request_headers`;
    a websocket 101 keeps its Upgrade/Connection and loses `Sec-WebSocket-Extensions` (an upstream
    must not switch on compression the proxy did not offer)."""
    extra = {"proxy-authenticate"} | ({"set-cookie", "set-cookie2"} if strip_set_cookie else set())
    _strip(headers, extra, keep_framing)
