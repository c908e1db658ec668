"""Response protection (SPEC §5.7-§5.9): header hygiene, redaction of injected values in headers,
bodies (buffered or streamed, decoded within `--max-buffered-bytes`), trailers and WebSocket
messages, and the choice to stream event streams and large or unsized bodies.

Every answer goes through the same redaction, the proxy's own error answers included (they never
hold request bytes, but nothing relies on that). Raises for the addon's fail-closed boundary; a
body over the decoding cap raises `ResponseTooLarge` (the addon answers it).
"""

from __future__ import annotations

from mitmproxy import http

from agent_vault.audit import proxy_record
from agent_vault.core import Core
from agent_vault.errors import ExfiltrationBlocked
from agent_vault.proxy import guard, hygiene, live
from agent_vault.proxy.answers import is_proxy_answer
from agent_vault.proxy.exfil import Finding, matcher_for, scrub
from agent_vault.proxy.flowlog import FlowState
from agent_vault.proxy.guard import Guard, WsScan, ws_scan
from agent_vault.proxy.request_phase import STREAM_THRESHOLD, content_length
from agent_vault.proxy.streams import (
    WsState,
    redact_fields,
    redact_reason,
    response_filter,
    trim_ws_history,
    ws_message,
    ws_state,
)


class ResponsePhase:
    def __init__(self, core: Core, guard: Guard | None = None) -> None:
        self.core = core
        self.guard = guard
        self.websockets: dict[str, WsState] = {}  # flow id -> what its upgraded WebSocket needs
        self.ws_scans: dict[str, WsScan] = {}  # flow id -> exfiltration scan of client messages

    def headers(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        """`responseheaders`: hygiene and header redaction; decide whether the body streams."""
        resp = flow.response
        assert resp is not None
        d = fs.decision
        svc = d.service if d is not None and d.kind in ("injected", "passthrough") else None
        hygiene.strip_response_headers(resp.headers, svc is not None and not svc.effective_forward_set_cookie)
        redact_fields(resp.headers, fs)
        redact_reason(resp, fs)
        if resp.status_code < 200 or resp.status_code in (204, 304) or flow.request.method == "HEAD":
            return  # no body (a 101 becomes a WebSocket): nothing to stream or frame
        clen = content_length(resp.headers)
        if (
            clen is None
            or clen > STREAM_THRESHOLD
            or "text/event-stream" in resp.headers.get("content-type", "")
        ):
            resp.stream = response_filter(fs, flow, self.core.settings.max_buffered_bytes)
        guard.meter_response(self.core.services.usage, self.core.services.metrics, flow, fs)

    def complete(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        """`response`: redact a buffered body, set up an upgraded WebSocket, redact trailers; a
        streamed body that failed after its headers went out is reset (never "complete")."""
        resp = flow.response
        assert resp is not None
        if resp.trailers is not None:  # SPEC §14.6 holds for trailers too (sent after this hook)
            hygiene.strip_trailers(resp.trailers, hygiene.RESPONSE_ONLY)
        if is_proxy_answer(resp):
            if fs.secrets:
                fs.redact_buffered(resp, self.core.settings.max_buffered_bytes)
            return
        if resp.status_code == 101 and flow.websocket is not None:
            ws = ws_state(self.core.runtime, fs)
            if ws is not None:
                self.websockets[flow.id] = ws
            scan = ws_scan(fs) if self.guard is not None else None
            if scan is not None:
                self.ws_scans[flow.id] = scan
        elif not resp.stream:
            guard.meter_body(self.core.services.usage, self.core.services.metrics, flow, fs)
            fs.redact_buffered(resp, self.core.settings.max_buffered_bytes)
        elif fs.error is not None:
            flow.kill()  # type: ignore[no-untyped-call]
        if resp.trailers is not None and fs.secrets:  # sent after this hook, streamed or not
            redact_fields(resp.trailers, fs)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Substitute in client text messages (opt-in), redact server text messages (SPEC §5.8-§5.9);
        mitmproxy's per-connection message history is dropped."""
        msg = trim_ws_history(flow)
        scan = self.ws_scans.get(flow.id)
        if msg is not None and msg.from_client and scan is not None and self.guard is not None:
            found = self.guard.websocket(self.core.runtime.snapshot.vaults.get(scan.vault), scan, msg.content)
            if found is not None:  # never relayed: the connection is closed and the block audited
                msg.drop()  # type: ignore[no-untyped-call]
                self._ws_blocked(scan, found)
                live.close_client(flow.client_conn.id)  # flow.kill() does not end a WebSocket
                return
        ws = self.websockets.get(flow.id)
        if ws is not None and msg is not None:
            ws_message(ws, msg)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.websockets.pop(flow.id, None)
        self.ws_scans.pop(flow.id, None)

    def _ws_blocked(self, scan: WsScan, found: Finding) -> None:
        """One audit record for a WebSocket closed for carrying a value (names only)."""
        view = self.core.runtime.snapshot.vaults.get(scan.vault)
        host = scrub(scan.host, matcher_for(view)) if view is not None else scan.host
        self.core.audit.submit(
            proxy_record(
                actor=scan.actor,
                vault=scan.vault,
                method="WEBSOCKET",
                scheme="wss",
                host=host,
                port=scan.port,
                decision="denied",
                error=ExfiltrationBlocked.code,
                blocked_key=found.key,
            )
        )
