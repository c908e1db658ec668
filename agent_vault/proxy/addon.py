"""VaultAddon: the product's one mitmproxy addon -- the hooks in the engine's order, each behind ONE
fail-closed boundary (SPEC §5, §6, §14).

The jobs live in their own modules; this class only dispatches to them and owns the boundaries:
* `connections`: identity, pre-auth bounds, limits, tunnels, `Connection: close`;
* `pinning`: dial the address the SSRF guard checked;
* `request_phase`: the decision, substitution and injection;
* `response_phase`: hygiene and redaction of headers, bodies, trailers, WebSocket messages;
* `flowlog`: the audit record and metrics of each request, CONNECT and tunnel.

Boundary rule: an AgentVaultError becomes its SPEC §6 response; anything else becomes 502
`internal` with an incident id, and the request is not forwarded (mitmproxy itself would fail open).
Decisions use the CONNECT target or the absolute URL, never the `Host` header. Nothing here blocks:
identities, services and values come from the in-memory snapshot, audit records go to a queue.
Danger: injected values sit on the flow object until `_finish` scrubs them; they are never put in
`flow.metadata`, logs or exception messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mitmproxy import connection, http, tls
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import ClientTLSLayer, ServerTLSLayer

from agent_vault import notify
from agent_vault.core import Core
from agent_vault.domain import learn
from agent_vault.errors import AgentVaultError
from agent_vault.metrics import Metrics
from agent_vault.proxy import deadlines, engine, h1bounds, h2bounds, inject, live
from agent_vault.proxy.answers import error_response
from agent_vault.proxy.connections import Connections, ConnState
from agent_vault.proxy.decide import Identity
from agent_vault.proxy.fast import entry as fast
from agent_vault.proxy.fast.client import client_tls_failed
from agent_vault.proxy.flowlog import FlowLog, FlowState, incident
from agent_vault.proxy.live import ByteCounter, TunnelLayer
from agent_vault.proxy.ownapi import own_api_address
from agent_vault.proxy.pinning import Pinning
from agent_vault.proxy.request_phase import RequestPhase, content_length
from agent_vault.proxy.response_phase import ResponsePhase
from agent_vault.proxy.ssrf import Egress

__all__ = ["ConnState", "VaultAddon"]

USAGE_FLUSH_SECONDS = 2.0


def _declares_body(flow: http.HTTPFlow) -> bool:
    """An HTTP/1 request that announces a body (Transfer-Encoding, or a Content-Length other than 0)."""
    if flow.client_conn.alpn == b"h2":
        return False
    headers = flow.request.headers
    return "transfer-encoding" in headers or bool(content_length(headers))


def _as_error(e: Exception) -> AgentVaultError:
    """The SPEC §6 error for an exception at a boundary: itself, or a logged 502 `internal`."""
    return e if isinstance(e, AgentVaultError) else incident(e)


class VaultAddon:
    """The product's single mitmproxy addon."""

    def __init__(self, core: Core, metrics: Metrics) -> None:
        self.core = core
        self.metrics = metrics
        self.log = FlowLog(core.audit, metrics)
        self.egress = Egress(core.settings.allow_net, core.services.resolve)
        self.connections = Connections(core, metrics, self.log, self.egress)
        self.conns = self.connections.table
        self.pinning = Pinning(self.egress)
        self.connect_watch = deadlines.CONNECT_WATCH
        self.requests = RequestPhase(core, metrics, self.connections, self.egress)
        self.responses = ResponsePhase(core, self.requests.guard)
        self.requests.guard.on_exfiltration = lambda e: notify.exfiltration_blocked(
            core.notify,
            vault=e["vault"],
            actor=str(e["agent"] or ""),
            host=e["host"],
            service=None,
            keys=[e["key"]],
        )  # the webhook (issue 19) hears of every block (issue 20): names only
        self.flows: dict[str, FlowState] = {}
        self.fast_tasks: dict[str, asyncio.Task[None]] = {}  # client id -> its fast-path session
        self._on_reload: Callable[[], None] = lambda: None
        self._flusher: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    def running(self) -> None:
        """Admin changes reload the runtime (in API threads); re-check open tunnels on the loop."""
        loop = asyncio.get_running_loop()
        engine.set_websocket_limit(self.core.settings.max_buffered_bytes)
        h1bounds.set_request_limit(self.core.settings.max_request_bytes)  # a body queued while held
        h2bounds.set_limit(self.core.settings.max_buffered_bytes)
        deadlines.configure(self.core.settings.connect_timeout, self.core.settings.first_byte_timeout)

        def on_reload() -> None:
            loop.call_soon_threadsafe(self.connections.close_revoked_tunnels)

        self._on_reload = on_reload
        self.core.runtime.listeners.append(on_reload)
        self.core.services.open_connections = self.connections.bound_to
        self._flusher = loop.create_task(self._flush_usage())

    async def _flush_usage(self) -> None:
        """Persist LLM token usage every few seconds, off the loop (a thread)."""
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.core.services.usage.flush)
                seen = self.requests.guard.learner.drain()
                if seen:
                    await asyncio.to_thread(learn.write_drafts, self.core, seen)
            except Exception as e:  # a full disk or a busy store must not stop the proxy; next round
                incident(e)

    def done(self) -> None:
        self.core.services.open_connections = None
        if self._flusher is not None:
            self._flusher.cancel()
        try:
            self.core.services.usage.flush()
        except OSError as e:
            incident(e)
        if self._on_reload in self.core.runtime.listeners:
            self.core.runtime.listeners.remove(self._on_reload)

    # ---- connections ----------------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        self.connections.connected(client)

    def client_disconnected(self, client: connection.Client) -> None:
        self.connections.disconnected(client)
        holds = self.core.services.holds
        if holds is not None:
            holds.cancel_client(client.id)
        task = self.fast_tasks.pop(client.id, None)
        if task is not None:  # a fast-path request in flight: audited as client_disconnected
            task.cancel()

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Refusals here are the CONNECT response itself, before any TLS (SPEC §6)."""
        ident: Identity | None = None
        try:
            headers = flow.request.headers
            ident = self.connections.authenticate(headers.get("proxy-authorization"), headers.get("x-vault"))
            await self.connections.connect(flow, ident)
        except Exception as e:
            err = _as_error(e)
            flow.response = error_response(err)
            self.log.refused_connect(flow, ident, err)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """A tunnel is a raw TCP relay: no TLS termination, no HTTP parsing, whatever the protocol."""
        st = self.connections.get(nextlayer.context.client.id)
        if st is not None and st.mode == "tunnel":
            nextlayer.layer = TunnelLayer(nextlayer.context, st.relayed, self._splice)
        elif (
            self.core.settings.fast_path
            and st is not None
            and st.mode == "mitm"
            and st.ident is not None
            and st.target is not None
            and isinstance(nextlayer.layer, ServerTLSLayer | ClientTLSLayer)  # the engine's TLS
        ):
            hello = nextlayer.data_client()  # type: ignore[no-untyped-call]
            # issue 24: the whole connection goes lean, before any relay
            lean = fast.lean_hello(hello, offer_h2=self.core.settings.offer_h2)
            if lean is not None:
                nextlayer.layer = fast.FastLayer(nextlayer.context, self, st.target, lean)

    @staticmethod
    def _splice(context: Context, counter: ByteCounter) -> None:
        handler = live.handler_of(context.client.id)
        if handler is not None:
            live.splice_tunnel(handler, context.client, context.server, counter)

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Choose HTTP/2 whenever the client offers it: httpx behind a proxy lists http/1.1 first and
        mitmproxy would honour that order (SPEC §5.1 offers h2 inside MITM'd TLS; §16 httpx h2)."""
        app = data.ssl_conn.get_app_data() if data.ssl_conn is not None else None
        if app and app["http2"] and app["client_alpn"] is None and b"h2" in (data.conn.alpn_offers or ()):
            app["client_alpn"] = b"h2"

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connect_watch.arm(data.client.id, data.server)  # SPEC §6 upstream_timeout (deadlines)
        addr, own = data.server.address, None
        if addr is not None:  # agent-vault's own API, for an agent on this machine (ownapi)
            own = own_api_address(self.core.api_url, data.client.peername, str(addr[0]), int(addr[1]))
        await self.pinning.connect(data.server, own)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connect_watch.connected(data.server)
        self.pinning.unpin(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connect_watch.disarm(data.server)
        self.pinning.unpin(data.server)

    def server_disconnected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self.connect_watch.disarm(data.server)

    def tls_established_server(self, data: tls.TlsData) -> None:
        self.connect_watch.disarm(data.conn)

    def tls_failed_server(self, data: tls.TlsData) -> None:
        self.connect_watch.disarm(data.conn)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """SPEC §13: a client's handshake failed (usually the CA is not trusted): warn and count."""
        client_tls_failed(self.metrics, data.conn.sni, data.conn.error or "")

    # ---- requests -------------------------------------------------------------------------------
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        fs = self.flows[flow.id] = FlowState(time.perf_counter(), req.host, req.port, req.path)
        self.connections.note_close(flow)
        try:
            await self.requests.headers(flow, fs)
        except Exception as e:
            self._reject(flow, fs, _as_error(e))
            if flow.response is not None and _declares_body(flow):
                flow.response.headers["connection"] = "close"  # its body is never forwarded: the
                # connection ends with the answer, as on the fast path, rather than reading on past it

    def request(self, flow: http.HTTPFlow) -> None:
        fs = self.flows.get(flow.id)
        if fs is None or fs.error is not None or flow.response is not None or fs.decision is None:
            return
        try:
            self.requests.body(flow, fs)
        except Exception as e:
            self._reject(flow, fs, _as_error(e))

    # ---- responses ------------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fs = self.flows.get(flow.id)
        if fs is None or flow.response is None or fs.error is not None:
            return
        try:
            self.responses.headers(flow, fs)
            self.connections.close_if_asked(flow)
        except Exception as e:  # fail closed: never hand an unscanned body over
            incident(e)
            flow.kill()  # type: ignore[no-untyped-call]

    def response(self, flow: http.HTTPFlow) -> None:
        self.response_checked(flow)
        self._finish(flow)

    def response_checked(self, flow: http.HTTPFlow) -> None:
        """`response` without the ending (`_finish`: audit record, metrics): the response is final
        and fit to send after it. The fast path sends it, then calls `_finish` with no await in
        between, so the agent does not wait for the bookkeeping and no request escapes the audit."""
        fs = self.flows.get(flow.id)
        if fs is not None and flow.response is not None:
            try:
                self.responses.complete(flow, fs)
            except Exception as e:  # replace what could not be checked (e.g. response_too_large)
                err = _as_error(e)
                flow.response = error_response(err)
                fs.error = err.code
        self.connections.close_if_asked(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.responses.websocket_end(flow)
        self._finish(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        try:
            self.responses.websocket_message(flow)
        except Exception as e:  # fail closed
            incident(e)
            flow.kill()  # type: ignore[no-untyped-call]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.responses.websocket_end(flow)

    # ---- endings --------------------------------------------------------------------------------
    def _reject(self, flow: http.HTTPFlow, fs: FlowState, err: AgentVaultError) -> None:
        """Answer a request with a proxy error; the upstream is never contacted."""
        flow.request.stream = False
        flow.response = error_response(err)
        self.connections.close_if_asked(flow)
        fs.error = err.code
        self.log.denied(fs, err)

    def in_flight(self) -> int:
        """Requests between their headers and their audit record (both paths): what a stop waits for."""
        return len(self.flows)

    def _finish(self, flow: http.HTTPFlow) -> None:
        """Audit and count the request, and scrub injected values from the flow object."""
        fs = self.flows.pop(flow.id, None)
        if fs is None:
            return
        inj = fs.decision.injection if fs.decision is not None else None
        if inj is not None:
            req = flow.request
            for name in inj.headers:
                if name in req.headers:
                    req.headers[name] = "[scrubbed]"
            if inj.query:
                req.path = inject.set_query_params(req.path, dict.fromkeys(inj.query, "scrubbed"))
        self.log.finished(flow, fs)
