"""Streamed bodies and WebSocket state for the addon (SPEC §5.8, §5.9).

`response_filter` is a mitmproxy `flow.response.stream` callable: it counts bytes, decodes
gzip/deflate/br/zstd when the body must be scanned (bounded: `decoding`), and redacts
incrementally, holding back only a tail that could start a secret (so SSE events are not delayed).
mitmproxy calls it with b"" at the end of the body. It returns [] rather than b"" when it holds
everything back: mitmproxy's HTTP/1 server would frame b"" as the zero-length chunk that ends a
chunked body. A body that decodes past the cap (or does not decode) after its headers were sent
is aborted: the filter swallows the rest, closes the upstream connection, and the `response` hook
kills the flow if the end arrived first, so the agent sees a reset stream, never a truncated
"complete" body; the audit record carries the code (`fs.error`).

WebSockets (mitmproxy's layer reassembles each message in memory): `engine.set_websocket_limit`
makes every intercepted WebSocket close with 1009 when a message grows past the cap, and
`trim_ws_history` drops `flow.websocket.messages` (mitmproxy keeps every message otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.websocket import WebSocketMessage

from agent_vault.errors import AgentVaultError, BodyTooLarge, ProxyInternal, ResponseTooLarge
from agent_vault.proxy import decoding, inject, live
from agent_vault.proxy.engine import BodyOverLimit, BufferWhole
from agent_vault.proxy.flowlog import FlowState
from agent_vault.proxy.redact import contains_secret, redact_bytes
from agent_vault.runtime import Runtime

Filter = Callable[[bytes], bytes]
StreamFn = Callable[[bytes], bytes | list[bytes]]


def counter(fs: FlowState, *, up: bool) -> Filter:
    def count(chunk: bytes) -> bytes:
        if up:
            fs.bytes_up += len(chunk)
        else:
            fs.bytes_down += len(chunk)
        return chunk

    return count


def limited_upload(fs: FlowState, limit: int) -> Filter:
    """Count an upload of unknown length; raise BodyOverLimit (engine cuts the request) past `limit`."""

    def count(chunk: bytes) -> bytes:
        fs.bytes_up += len(chunk)
        if fs.bytes_up > limit:
            fs.error = BodyTooLarge.code
            raise BodyOverLimit(limit)
        return chunk

    return count


def buffer_whole(fs: FlowState, limit: int, message: str) -> BufferWhole:
    """For a body the proxy must see whole (body substitution, a SigV4 payload hash): both paths read
    it into memory whatever its framing, and past `limit` bytes refuse it with 413 `body_too_large`
    (`limit_bytes`: `limit`); it is never forwarded in part."""

    def refuse() -> AgentVaultError:
        fs.error = BodyTooLarge.code
        return BodyTooLarge(message, limit_bytes=limit)

    return BufferWhole(limit, refuse)


def stream_decoder(encoding: str, limit: int) -> Filter | None:
    """An incremental decoder for one Content-Encoding (b"" ends the body), or None if unsupported.

    Raises `decoding.DecodedTooLarge` once the decoded total passes `limit`, and
    `decoding.CorruptEncoding` on malformed data; it never holds more than `limit` decoded bytes."""
    dec = decoding.decoder(encoding, limit)
    if dec is None:
        return None
    return lambda chunk: dec.feed(chunk) if chunk else b""


def response_filter(fs: FlowState, flow: http.HTTPFlow, limit: int) -> StreamFn:
    """The stream callable for one response; rewrites framing headers when the length changes.

    `limit` caps the decoded size of a compressed body (`--max-buffered-bytes`); past it the stream
    is aborted with `response_too_large` (see the module docstring)."""
    resp = flow.response
    assert resp is not None
    if not fs.secrets:
        return counter(fs, up=False)
    decode: Filter | None = None
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        decode = stream_decoder(encoding, limit)
        if decode is None:  # SPEC §5.9: forwarded unscanned, noted in the audit record
            fs.redaction_skipped = True
            return counter(fs, up=False)
        resp.headers.pop("content-encoding")
    # Redaction (and decoding) change the length: drop it, and chunk for HTTP/1.1 clients.
    resp.headers.pop("content-length", None)
    req = flow.request
    if req.http_version == "HTTP/1.1" and "chunked" not in resp.headers.get("transfer-encoding", ""):
        resp.headers["transfer-encoding"] = "chunked"
    redactor = inject.StreamRedactor(fs.secrets)
    failed = False

    def filt(chunk: bytes) -> bytes | list[bytes]:
        nonlocal failed
        fs.bytes_down += len(chunk)
        if failed:
            return []
        try:
            data = decode(chunk) if decode is not None else chunk
        except (decoding.DecodedTooLarge, decoding.CorruptEncoding) as e:
            # Headers are out: nothing more reaches the agent, the stream is reset (never "complete").
            failed = True
            fs.error = (
                ResponseTooLarge.code if isinstance(e, decoding.DecodedTooLarge) else ProxyInternal.code
            )
            live.abort_server(flow.client_conn.id, flow.server_conn)
            return []
        out = redactor.feed(data) if chunk else redactor.feed(data) + redactor.flush()
        fs.redacted |= redactor.redacted_keys
        return out if out else []

    return filt


def redact_fields(headers: http.Headers, fs: FlowState) -> None:
    """Redact injected values from header (or trailer) fields in place, noting the keys in `fs`.

    A value inside a field's value is replaced by `[REDACTED:KEY]`; a field whose NAME holds a value
    (an upstream echoing it into a name; in any case, as HTTP/2 lower-cases names) is dropped, since a
    name cannot carry the marker. One pass over the fields and one assignment: linear in their number
    (a hostile upstream sends thousands of fields; a per-name rewrite was quadratic)."""
    secrets = fs.secrets
    if not secrets:
        return
    fields = headers.fields
    low = b"\n".join(b"%s:%s" % f for f in fields).lower()
    if not any(value.lower() in low for _, value in secrets):
        return
    lowered = [(key, value.lower()) for key, value in secrets]
    out: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        lname = name.lower()
        hit = next((key for key, v in lowered if v in lname), None)
        if hit is not None:
            fs.redacted.add(hit)
            continue
        if contains_secret(value, secrets):
            value, keys = redact_bytes(value, secrets)
            fs.redacted |= keys
        out.append((name, value))
    headers.fields = tuple(out)


def redact_reason(resp: http.Response, fs: FlowState) -> None:
    """An HTTP/1 reason phrase holding an injected value (any case) becomes the status code's standard
    phrase (empty for an unknown code), the key noted in `fs`."""
    reason = resp.data.reason
    if not fs.secrets or not reason:
        return
    low = reason.lower()
    hit = next((key for key, value in fs.secrets if value.lower() in low), None)
    if hit is not None:
        resp.reason = status_codes.RESPONSES.get(resp.status_code, "")
        fs.redacted.add(hit)


@dataclass(slots=True)
class WsState:
    """Secrets to redact from server text messages; values to substitute into client ones."""

    secrets: list[tuple[str, bytes]] = field(repr=False)
    values: dict[str, str] = field(repr=False)


def ws_state(runtime: Runtime, fs: FlowState) -> WsState | None:
    """What an upgraded WebSocket of this request needs, or None for a plain relay."""
    d = fs.decision
    svc = d.service if d is not None else None
    if svc is None or fs.ident is None or d is None or d.kind not in ("injected", "passthrough"):
        return None
    values: dict[str, str] = {}
    if "websocket" in svc.substitutions.in_:
        view = runtime.snapshot.vaults[fs.ident.vault]
        values = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
        fs.add_secrets(svc, None, values)
    if not fs.secrets and not values:
        return None
    return WsState(list(fs.secrets), values)


def ws_message(ws: WsState, msg: WebSocketMessage, max_size: int = 1 << 20) -> None:
    """Substitute into a client text message (opt-in, <= 1 MiB), redact a server text message."""
    if not msg.is_text:
        return
    if msg.from_client:
        if ws.values and len(msg.content) <= max_size:
            text, used = inject.substitute_text(msg.text, ws.values, ws.values.keys(), encoding="raw")
            if used:
                msg.text = text
    elif ws.secrets:
        content, keys = inject.redact_bytes(msg.content, ws.secrets)
        if keys:
            msg.content = content


def trim_ws_history(flow: http.HTTPFlow) -> WebSocketMessage | None:
    """The message of the current `websocket_message` hook; forgets the earlier ones (mitmproxy keeps
    every message of a connection in `flow.websocket.messages` for the connection's lifetime)."""
    if flow.websocket is None or not flow.websocket.messages:
        return None
    del flow.websocket.messages[:-1]
    return flow.websocket.messages[-1]
