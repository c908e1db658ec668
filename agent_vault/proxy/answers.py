"""What the proxy answers by itself (SPEC §6): the JSON error response, and the classification of the
engine's own failures into SPEC §6 codes.

Danger: the engine builds some failure messages from raw upstream or request bytes, which can hold an
injected value or a token. Nothing here copies such a message into an answer: causes come from a
fixed list, messages name hosts and causes only.
"""

from __future__ import annotations

import json
import re

from mitmproxy import http
from mitmproxy.net.http import http1

from agent_vault.errors import (
    AgentVaultError,
    BadRequest,
    BodyTooLarge,
    ExfiltrationBlocked,
    HeadersTooLarge,
    ProxyAuthRequired,
    ProxyInternal,
    RateLimited,
    UpstreamDns,
    UpstreamTimeout,
    UpstreamTls,
    UpstreamUnreachable,
)

PROXY_ERROR_HEADER = "X-Agent-Vault-Proxy-Error"
ORIGIN_FORM_HINT = "Use this address as HTTPS_PROXY / HTTP_PROXY; do not send requests to it directly."
MAX_HEAD_BYTES = 64 << 10  # request line + headers from a client, status line + headers from an upstream


def error_response(err: AgentVaultError) -> http.Response:
    """The SPEC §6 response for `err`: JSON body, `X-Agent-Vault-Proxy-Error: true`, extra headers."""
    headers = {"Content-Type": "application/json", PROXY_ERROR_HEADER: "true"}
    if isinstance(err, ProxyAuthRequired):
        headers["Proxy-Authenticate"] = 'Basic realm="agent-vault"'
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.extra.get("retry_after", 1))
    return http.Response.make(err.status, json.dumps(err.body()).encode(), headers)


def is_proxy_answer(resp: http.Response | None) -> bool:
    """True for a response this proxy generated (upstream `X-Agent-Vault-*` headers are stripped)."""
    return resp is not None and resp.headers.get(PROXY_ERROR_HEADER) == "true"


# (words in the engine's message, the cause we report). The engine builds some messages from raw
# upstream or request bytes (`Cannot parse HTTP response: Bad HTTP response line: b'...'`), which can
# hold an injected value: a cause is therefore always one of these fixed phrases, never a copy.
UPSTREAM_OVERRUN = "the upstream sent more than its response"  # h1bounds' protocol error (no bytes in it)
_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("timed out", "timeout"), "timed out"),
    (("refused",), "connection refused"),
    (("reset",), "connection reset"),
    (("name or service", "getaddrinfo", "nodename", "no address associated"), "name does not resolve"),
    (("no route",), "no route to host"),
    (("unreachable",), "network unreachable"),
    ((UPSTREAM_OVERRUN,), UPSTREAM_OVERRUN),  # h1bounds: an upstream sending past its response
    (("cannot parse http response", "unexpected server response"), "malformed response from the upstream"),
    (("server closed connection",), "the upstream closed the connection before answering"),
    (("head over the limit",), "the upstream's response head is over the proxy's limit"),
    (("hostname mismatch",), "certificate verify failed: hostname mismatch"),
)
_TLS_WORDS = ("certificate", "tls", "ssl", "handshake")
_VERIFY_REASON = re.compile(r"certificate verify failed: ([a-z][a-z ,-]{0,79})")


def _cause(low: str) -> str:
    """A fixed phrase for an engine message (lowercased); OpenSSL's verify reason only when it is
    plain words (`self-signed certificate`, `unable to get local issuer certificate`)."""
    m = _VERIFY_REASON.search(low)
    if m:
        return "certificate verify failed: " + m.group(1).strip(" ,-")
    for words, cause in _CAUSES:
        if any(w in low for w in words):
            return cause
    if any(w in low for w in _TLS_WORDS):
        return "TLS handshake failed"
    return "connection failed"


def upstream_error(message: str, target: str = "the upstream") -> AgentVaultError:
    """Classify an engine connection error message into the SPEC §6 upstream_* error. The message
    is never copied into the answer (see `_CAUSES`)."""
    low = message.lower()
    cause = _cause(low)
    if cause.startswith("certificate") or (
        any(w in low for w in _TLS_WORDS) and cause in ("TLS handshake failed", "connection failed")
    ):
        return UpstreamTls(f"TLS to {target} failed", cause=cause)
    if cause == "timed out":
        return UpstreamTimeout(f"{target} did not answer in time", cause=cause)
    if cause == "name does not resolve":
        return UpstreamDns(f"{target} does not resolve", cause=cause)
    return UpstreamUnreachable(f"cannot reach {target}", cause=cause)


def engine_error(status: int, message: str) -> AgentVaultError:
    if status == 400 and "invalid request scheme" in message.lower():  # SPEC §5.1: other schemes
        return BadRequest("this proxy forwards http and https requests only", hint=ORIGIN_FORM_HINT)
    if status == 400 and "destination unknown" in message:
        return BadRequest(
            "this is a forward proxy: send absolute-form or CONNECT requests", hint=ORIGIN_FORM_HINT
        )
    if status == 400:
        return BadRequest("the request could not be parsed", hint="Send a well-formed HTTP proxy request.")
    if status == 413 and message.startswith("exfiltration blocked"):  # a streamed upload cut (guard)
        return ExfiltrationBlocked(message)
    if status == 413:
        return BodyTooLarge("the body is over the proxy's limit")
    if status == 431:
        return HeadersTooLarge(
            "the request line and headers are over the proxy's limit", limit_bytes=MAX_HEAD_BYTES
        )
    if status in (502, 504):
        return upstream_error(message)
    return ProxyInternal("the proxy could not handle the request")


def h1_error_response(status_code: int, message: str = "") -> bytes:
    """Replacement for mitmproxy's HTML error page on HTTP/1 connections."""
    resp = error_response(engine_error(status_code, message))
    resp.headers["Connection"] = "close"
    return bytes(http1.assemble_response(resp))  # type: ignore[no-untyped-call]
