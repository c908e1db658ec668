"""Header hygiene has two implementations: a one-pass one over mitmproxy's raw `Headers.fields`
(the proxy's hot path) and a generic Mapping one. Both must remove exactly the same fields."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from agent_vault.proxy import hygiene


class MappingOnly(MutableMapping[str, str]):
    """mitmproxy Headers seen only through the Mapping interface (no `.fields`)."""

    def __init__(self, h: http.Headers) -> None:
        self._h = h

    def __getitem__(self, k: str) -> str:
        return self._h[k]

    def __setitem__(self, k: str, v: str) -> None:
        self._h[k] = v

    def __delitem__(self, k: str) -> None:
        del self._h[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._h)

    def __len__(self) -> int:
        return len(self._h)


NAMES = [
    "Connection",
    "connection",
    "Upgrade",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Content-Length",
    "Proxy-Authorization",
    "Proxy-Connection",
    "X-Vault",
    "X-Agent-Vault-Debug",
    "Authorization",
    "Set-Cookie",
    "X-Custom",
    "Host",
    "Proxy-Authenticate",
    "Accept",
]
VALUES = [
    "keep-alive",
    "close",
    "Upgrade",
    "upgrade, X-Custom",
    "websocket",
    "trailers",
    "gzip",
    "1",
    "x",
    "",
]
fields = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8)


def _headers(items: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode(), v.encode()) for k, v in items])


def _canon(h: http.Headers) -> list[tuple[str, list[str]]]:
    """Fields as (lower name, values) per distinct name, in first-appearance order."""
    return sorted((k.lower(), h.get_all(k)) for k in set(h))


@settings(max_examples=300, deadline=None)
@given(fields, st.booleans(), st.booleans(), st.lists(st.sampled_from(["authorization", "x-custom"])))
def test_fast_and_generic_strip_agree(
    items: list[tuple[str, str]], request_side: bool, keep_framing: bool, injected: list[str]
) -> None:
    fast, slow = _headers(items), _headers(items)
    if request_side:
        hygiene.strip_request_headers(fast, injected, keep_framing=keep_framing)
        hygiene.strip_request_headers(MappingOnly(slow), injected, keep_framing=keep_framing)
    else:
        hygiene.strip_response_headers(fast, bool(injected), keep_framing=keep_framing)
        hygiene.strip_response_headers(MappingOnly(slow), bool(injected), keep_framing=keep_framing)
    assert _canon(fast) == _canon(slow)
    names = {k.lower() for k in fast}
    assert not any(n.startswith("x-agent-vault-") for n in names)
    assert not names & {"keep-alive", "proxy-connection", "trailer"}
    if request_side:
        assert not names & {"proxy-authorization", "x-vault", *injected}
