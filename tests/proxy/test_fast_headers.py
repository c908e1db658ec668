"""IndexedHeaders (the fast path's header index) answers exactly like mitmproxy's Headers, through any
sequence of reads and writes: a stale index would let a hook read a header that is gone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mitmproxy import http

from agent_vault.proxy.fast.headers import IndexedHeaders

NAMES = st.sampled_from(
    ["Host", "host", "HOST", "Content-Length", "x-a", "X-A", "Accept", "te", "\u00e9t\u00e9"]
)
VALUES = st.sampled_from(["", "1", "a, b", "v\u00e9", "gzip", "trailers"])
RAW = st.tuples(
    st.sampled_from([b"Host", b"x-a", b"X-A", b"Accept", b"\xff-odd"]), st.sampled_from([b"1", b"\xfe", b""])
)


def _do(h: Any, op: tuple[Any, ...]) -> Any:
    kind, name, value = op
    try:
        if kind == "get":
            return h.get(name, "default")
        if kind == "getitem":
            return h[name]
        if kind == "contains":
            return name in h
        if kind == "get_all":
            return h.get_all(name)
        if kind == "set":
            h[name] = value
        elif kind == "del":
            del h[name]
        elif kind == "add":
            h.add(name, value)
        elif kind == "insert":
            h.insert(0, name, value)
        elif kind == "set_all":
            h.set_all(name, [value, value])
        elif kind == "pop":
            return h.pop(name, None)
        elif kind == "fields":
            h.fields = ((name.encode("utf-8", "surrogateescape"), value.encode()),)
        return ("fields", h.fields)
    except (KeyError, TypeError, AttributeError) as e:
        return type(e).__name__


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "get",
                "getitem",
                "contains",
                "get_all",
                "set",
                "del",
                "add",
                "insert",
                "set_all",
                "pop",
                "fields",
            ]
        ),
        NAMES,
        VALUES,
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(RAW, max_size=6), ops=OPS)
def test_indexed_headers_answer_like_headers(fields: list[tuple[bytes, bytes]], ops: list[Any]) -> None:
    plain = http.Headers(fields)
    indexed = IndexedHeaders.adopt(http.Headers(fields))
    for op in ops:
        assert _do(indexed, op) == _do(plain, op), op
        assert indexed.fields == plain.fields
    assert bytes(indexed) == bytes(plain)
    assert list(indexed.items(multi=True)) == list(plain.items(multi=True))  # type: ignore[no-untyped-call]


def test_a_copy_is_indexed_and_independent() -> None:
    h = IndexedHeaders.adopt(http.Headers([(b"Authorization", b"Bearer x")]))
    assert h["authorization"] == "Bearer x"
    c = h.copy()
    c["authorization"] = "[scrubbed]"
    assert h["authorization"] == "Bearer x"
    assert c["Authorization"] == "[scrubbed]"


@pytest.mark.parametrize("bad", [None, 1, 1.5])
def test_odd_keys_raise_what_headers_raises(bad: Any) -> None:
    def error(probe: Any, h: Any) -> str:
        with pytest.raises((TypeError, AttributeError)) as e:
            probe(h)
        return e.typename

    for probe in (lambda x: x[bad], lambda x: bad in x, lambda x: x.get(bad)):
        plain = http.Headers([(b"a", b"1")])
        assert error(probe, IndexedHeaders.adopt(plain)) == error(probe, plain)


HYGIENE_FIELDS = st.tuples(
    st.sampled_from(
        [
            b"Host",
            b"Authorization",
            b"AUTHORIZATION",
            b"Proxy-Authorization",
            b"X-Vault",
            b"Connection",
            b"connection",
            b"Keep-Alive",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"Content-Length",
            b"Upgrade",
            b"X-Agent-Vault-Debug",
            b"x-custom",
            b"X-Custom",
            b"Set-Cookie",
            b"\xc0-odd",
            b"\xe0-odd",
            b"Sec-WebSocket-Extensions",
        ]
    ),
    st.sampled_from(
        [
            b"1",
            b"keep-alive",
            b"close, x-custom",
            b"Upgrade",
            b"websocket",
            b"trailers",
            b"x-custom, \xe0-odd",
            b"",
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(HYGIENE_FIELDS, max_size=8),
    injected=st.lists(st.sampled_from(["Authorization", "x-custom", "X-Api-Key"]), max_size=2),
    keep_framing=st.booleans(),
    cookies=st.booleans(),
)
@example(  # a repeated name and a websocket handshake: the general path once zipped fields with names
    fields=[(b"Host", b"1"), (b"Host", b"1"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
    injected=[],
    keep_framing=False,
    cookies=False,
)
def test_header_hygiene_strips_indexed_headers_like_headers(
    fields: list[tuple[bytes, bytes]], injected: list[str], keep_framing: bool, cookies: bool
) -> None:
    """The hooks' header hygiene drops fields by name on indexed headers (keeping the index): the
    same fields go, the same stay, in order, and every lookup after it answers as on plain Headers."""
    from agent_vault.proxy.hygiene import strip_request_headers, strip_response_headers

    for strip in (
        lambda h: strip_request_headers(h, injected, keep_framing=keep_framing),
        lambda h: strip_response_headers(h, cookies, keep_framing=keep_framing),
    ):
        plain = http.Headers(fields)
        indexed = IndexedHeaders.adopt(http.Headers(fields))
        indexed.get("host")  # the index exists before the strip, as in the hooks
        strip(plain)
        strip(indexed)
        assert indexed.fields == plain.fields
        for name in ("host", "authorization", "connection", "x-custom", "te", "\u00c0-odd", "content-length"):
            assert indexed.get_all(name) == plain.get_all(name), name
