"""Streamed bodies and WebSocket state for the addon (SPEC §5.8, §5.9).

`response_filter` is a mitmproxy `flow.response.stream` callable: it counts bytes, decodes
gzip/deflate/br/zstd when the body must be scanned, and redacts incrementally, holding back only
a tail that could start a secret (so SSE events are not delayed). mitmproxy calls it with b""
at the end of the body. It returns [] rather than b"" when it holds everything back: mitmproxy's
HTTP/1 server would frame b"" as the zero-length chunk that ends a chunked body.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import brotli  # type: ignore[import-untyped]
from mitmproxy import http
from mitmproxy.websocket import WebSocketMessage

from agent_vault.errors import BodyTooLarge
from agent_vault.proxy import inject
from agent_vault.proxy.engine import BodyOverLimit
from agent_vault.proxy.flowlog import FlowState
from agent_vault.runtime import Runtime

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - the standard library has it from 3.14
    from backports import zstd

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


def stream_decoder(encoding: str) -> Filter | None:
    """An incremental decoder for one Content-Encoding (b"" flushes), or None if unsupported."""
    if encoding in ("gzip", "x-gzip", "deflate"):
        z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
        return lambda chunk: z.decompress(chunk) if chunk else z.flush()
    if encoding == "br":
        b = brotli.Decompressor()
        return lambda chunk: b.process(chunk) if chunk else b""
    if encoding == "zstd":
        zs = zstd.ZstdDecompressor()
        return lambda chunk: zs.decompress(chunk) if chunk else b""
    return None


def response_filter(fs: FlowState, flow: http.HTTPFlow) -> StreamFn:
    """The stream callable for one response; rewrites framing headers when the length changes."""
    resp = flow.response
    assert resp is not None
    if not fs.secrets:
        return counter(fs, up=False)
    decode: Filter | None = None
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        decode = stream_decoder(encoding)
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

    def filt(chunk: bytes) -> bytes | list[bytes]:
        fs.bytes_down += len(chunk)
        data = decode(chunk) if decode is not None else chunk
        out = redactor.feed(data) if chunk else redactor.feed(data) + redactor.flush()
        fs.redacted |= redactor.redacted_keys
        return out if out else []

    return filt


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
