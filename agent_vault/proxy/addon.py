"""VaultAddon: the mitmproxy hooks, thin and fail-closed (SPEC §5, §6, §14).

Each hook has ONE boundary try: an AgentVaultError becomes its SPEC §6 response; anything else
becomes 502 `internal` and the request is not forwarded (mitmproxy itself would fail open).
Decisions use the CONNECT target or the absolute URL, never the `Host` header. Nothing here
blocks: identities, services and credential values come from the in-memory runtime snapshot,
audit records go to a queue.
Dangers: injected values sit on the flow object until `_finish` scrubs them; they are never put
in `flow.metadata`, logs or exception messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, http, tls
from mitmproxy.net.http import http1, url
from mitmproxy.proxy import layer, server_hooks
from mitmproxy.proxy.context import Context

from agent_vault.core import Core
from agent_vault.errors import (
    AgentVaultError,
    BadRequest,
    BodyTooLarge,
    ProxyAuthRequired,
    RateLimited,
    VaultForbidden,
)
from agent_vault.hostpath import InvalidHost, normalize_host
from agent_vault.metrics import Metrics
from agent_vault.proxy import inject
from agent_vault.proxy.decide import Identity, authenticate, decide, recheck, wants_mitm
from agent_vault.proxy.engine import (
    ByteCounter,
    TunnelLayer,
    error_response,
    is_proxy_answer,
    splice_tunnel,
)
from agent_vault.proxy.flowlog import FlowLog, FlowState, incident
from agent_vault.proxy.redact import contains_secret
from agent_vault.proxy.ssrf import Egress
from agent_vault.proxy.streams import (
    WsState,
    counter,
    install_websocket_limits,
    limited_upload,
    redact_fields,
    response_filter,
    trim_ws_history,
    uninstall_websocket_limits,
    ws_message,
    ws_state,
)
from agent_vault.ratelimit import Limits

STREAM_THRESHOLD = 1 << 20


@dataclass(slots=True)
class ConnState:
    """Per client connection: the identity and target bound by CONNECT, and how it is relayed."""

    ident: Identity | None = None
    target: tuple[str, int] | None = None
    mode: str = "direct"  # direct | mitm | tunnel
    started: float = field(default_factory=time.monotonic)
    relayed: ByteCounter = field(default_factory=ByteCounter)  # tunnels only
    limits: Limits | None = None  # the limiter set this connection is counted in (per vault)
    close: bool = False  # an HTTP/1 request asked for `Connection: close`: close after the response


class VaultAddon:
    """The product's single mitmproxy addon."""

    def __init__(self, core: Core, metrics: Metrics) -> None:
        self.core = core
        self.metrics = metrics
        self.log = FlowLog(core.audit, metrics)
        self.conns: dict[str, ConnState] = {}
        self.flows: dict[str, FlowState] = {}
        self.websockets: dict[str, WsState] = {}
        self.pinned: dict[str, tuple[str, int]] = {}
        self.unauthenticated: set[str] = set()  # client ids with no identity bound yet (pre-auth)
        self.limits = Limits(core.settings.rate_limits)  # the server's profile; failed auth always
        self._profiles: dict[str, Limits] = {core.settings.rate_limits: self.limits}
        self.egress = Egress(core.settings.allow_net, core.services.resolve)
        self._on_reload: Callable[[], None] = lambda: None

    def running(self) -> None:
        """Admin changes reload the runtime (in API threads); re-check open tunnels on the loop."""
        loop = asyncio.get_running_loop()
        install_websocket_limits(self.core.settings.max_buffered_bytes)  # 1009 past it

        def on_reload() -> None:
            loop.call_soon_threadsafe(self._close_revoked_tunnels)

        self._on_reload = on_reload
        self.core.runtime.listeners.append(on_reload)

    def done(self) -> None:
        uninstall_websocket_limits()
        if self._on_reload in self.core.runtime.listeners:
            self.core.runtime.listeners.remove(self._on_reload)

    def _close_revoked_tunnels(self) -> None:
        """SPEC §3.1: close the tunnels of revoked tokens (MITM'd requests are re-checked anyway)."""
        handlers = ctx.master.addons.get("proxyserver").connections  # type: ignore[no-untyped-call]
        for cid, st in list(self.conns.items()):
            if st.mode == "tunnel" and st.ident is not None and cid in handlers:
                try:
                    recheck(self.core.runtime.snapshot, st.ident)
                except AgentVaultError:
                    handlers[cid].close_connection(handlers[cid].client)

    # ---- connections ----------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        """Pre-auth bounds: at most `max_unauthenticated` connections without an identity (more are
        closed at once) and `auth_timeout` seconds for each to authenticate (then it is closed)."""
        settings = self.core.settings
        if len(self.unauthenticated) >= settings.max_unauthenticated:
            client.error = "too many unauthenticated connections"  # mitmproxy closes it unread
            return
        self.conns[client.id] = ConnState()
        self.unauthenticated.add(client.id)
        self.metrics.active_connections.inc()
        asyncio.get_running_loop().call_later(settings.auth_timeout, self._auth_deadline, client.id)

    def _auth_deadline(self, cid: str) -> None:
        if cid in self.unauthenticated:
            handler = ctx.master.addons.get("proxyserver").connections.get(cid)  # type: ignore[no-untyped-call]
            if handler is not None:
                handler.close_connection(handler.client)

    def client_disconnected(self, client: connection.Client) -> None:
        self.unauthenticated.discard(client.id)
        st = self.conns.pop(client.id, None)
        if st is not None:
            self.metrics.active_connections.dec()
        if st is not None and st.ident is not None:
            if st.limits is not None:
                st.limits.close(st.ident.digest)
            if st.mode == "tunnel" and st.target is not None:
                self.metrics.active_tunnels.dec()
                self.log.tunnel(st.ident, st.target, time.monotonic() - st.started, st.relayed)

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Authenticate and decide MITM or tunnel from the CONNECT target, before any TLS (SPEC §5.3)."""
        st = self.conns.setdefault(flow.client_conn.id, ConnState())
        ident: Identity | None = None
        try:
            headers = flow.request.headers
            ident = self._authenticate(headers.get("proxy-authorization"), headers.get("x-vault"))
            host, port = self._target(flow.request.host, flow.request.port)
            mitm = wants_mitm(self.core.runtime.snapshot.vaults[ident.vault], ident.policy, host, port)
            if not mitm:
                await self.egress.address(host, port)  # SSRF: a tunnel is refused before the 200
            self._bind(st, ident)
            self.unauthenticated.discard(flow.client_conn.id)
            st.target, st.mode = (host, port), ("mitm" if mitm else "tunnel")
            flow.request.host = host  # normalised; server_connect pins the checked address
            if not mitm:
                self.metrics.active_tunnels.inc()
        except Exception as e:
            err = e if isinstance(e, AgentVaultError) else incident(e)
            flow.response = error_response(err)
            self.log.refused_connect(flow, ident, err)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """A tunnel is a raw TCP relay: no TLS termination, no HTTP parsing, whatever the protocol."""
        st = self.conns.get(nextlayer.context.client.id)
        if st is not None and st.mode == "tunnel":
            nextlayer.layer = TunnelLayer(nextlayer.context, st.relayed, self._splice)

    @staticmethod
    def _splice(context: Context, counter: ByteCounter) -> None:
        handler = ctx.master.addons.get("proxyserver").connections.get(context.client.id)  # type: ignore[no-untyped-call]
        if handler is not None:
            splice_tunnel(handler, context.client, context.server, counter)

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Choose HTTP/2 whenever the client offers it: httpx behind a proxy lists http/1.1 first and
        mitmproxy would honour that order (SPEC §5.1 offers h2 inside MITM'd TLS; §16 httpx h2)."""
        app = data.ssl_conn.get_app_data() if data.ssl_conn is not None else None
        if app and app["http2"] and app["client_alpn"] is None and b"h2" in (data.conn.alpn_offers or ()):
            app["client_alpn"] = b"h2"

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Dial exactly the address the SSRF guard checked; TLS SNI and verification use the target
        name (the CONNECT target or URL host), never the client's SNI (SPEC §5.10)."""
        server = data.server
        if server.address is None or server.id in self.pinned:
            return
        host, port = str(server.address[0]), int(server.address[1])
        try:
            ip = await self.egress.address(host, port)
        except AgentVaultError as e:
            server.error = f"refused by the proxy ({e.code})"
            return
        except Exception as e:
            server.error = f"refused by the proxy (internal, incident {incident(e).extra['incident']})"
            return
        server.sni = host
        if ip != host:
            self.pinned[server.id] = server.address
            server.address = (ip, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._unpin(data.server)

    def _unpin(self, server: connection.Server) -> None:
        """Give the connection its target name back: mitmproxy reuses upstream connections by
        address, so a connection verified for one host name never carries another host's request.
        `Server.__setattr__` refuses address changes on open connections (a *re-target* guard);
        this is a rename of the socket already dialled, hence object.__setattr__."""
        addr = self.pinned.pop(server.id, None)
        if addr is not None:
            object.__setattr__(server, "address", addr)

    # ---- requests -------------------------------------------------------------------------
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        fs = self.flows[flow.id] = FlowState(time.perf_counter(), req.host, req.port, req.path)
        self._note_close(flow)
        try:
            await self._request(flow, fs)
        except Exception as e:
            self._reject(flow, fs, e if isinstance(e, AgentVaultError) else incident(e))

    async def _request(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        req = flow.request
        st = self.conns.get(flow.client_conn.id)
        if st is not None and st.ident is not None and st.target is not None:
            fs.ident = st.ident  # a refusal below is recorded for the identity the connection had
            fs.ident = ident = st.ident = recheck(self.core.runtime.snapshot, st.ident)
            xv = req.headers.get("x-vault")
            if xv and xv != ident.vault:
                raise VaultForbidden(f"this connection is bound to vault {ident.vault}")
            host, port = st.target
        else:
            fs.ident = ident = self._authenticate(
                req.headers.get("proxy-authorization"), req.headers.get("x-vault")
            )
            host, port = self._target(req.host, req.port)
            if st is not None and (st.ident is None or st.ident.digest != ident.digest):
                self._bind(st, ident)  # absolute-form: the connection counts for its token too
                self.unauthenticated.discard(flow.client_conn.id)
        fs.host, fs.port = host, port
        limited = self._limits_for(ident.vault).request(ident.digest)
        if limited is not None:
            limiter, wait = limited
            raise RateLimited("request rate limit exceeded", retry_after=max(1, round(wait)), limiter=limiter)
        clen = _content_length(req.headers)
        limit = self.core.settings.max_request_bytes
        if clen is not None and clen > limit:
            raise BodyTooLarge("the request body is over the limit", limit_bytes=limit)
        view = self.core.runtime.snapshot.vaults[ident.vault]
        base = self.core.public_url
        fs.decision = d = decide(
            view,
            ident,
            host,
            port,
            req.method,
            req.path,
            f"{base}/v1/proposals",
            f"{base}/v1/discover",
            req.scheme,
        )
        await self.egress.address(host, port)
        svc, inj = d.service, d.injection
        matched = svc is not None and d.kind in ("injected", "passthrough")
        surfaces = svc.substitutions.in_ if svc is not None else []
        if matched and svc is not None:
            allowed = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
            req.path, fs.substituted = inject.substitute_request(req.headers, req.path, allowed, surfaces)
            fs.add_secrets(svc, inj, {k: allowed[k] for k in fs.substituted})
            if "websocket" in surfaces:
                req.headers.pop("sec-websocket-extensions", None)
        inject.strip_request_headers(req.headers, list(inj.headers) if inj else ())
        if inj is not None:
            req.path = inject.apply_injection(req.headers, req.path, inj)
        if fs.secrets:
            req.headers["accept-encoding"] = "identity"
        if not (matched and "body" in surfaces):
            if clen is None:  # chunked or HTTP/2 without a length: cut when it crosses the limit
                req.stream = limited_upload(fs, limit)
            elif clen > STREAM_THRESHOLD:
                req.stream = counter(fs, up=True)
        if req.host != host or req.port != port:  # the setters are costly; usually equal already
            req.host, req.port = host, port
        host_header = url.hostport(req.scheme, host, port)
        if req.host_header != host_header:
            req.host_header = host_header
        self.metrics.child(self.metrics.added_latency, d.kind).observe(time.perf_counter() - fs.started)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Only for buffered bodies of services that opted into body substitution (SPEC §5.6)."""
        fs = self.flows.get(flow.id)
        if fs is None or fs.error is not None or flow.response is not None or fs.decision is None:
            return
        svc = fs.decision.service
        if (
            svc is None
            or fs.decision.kind not in ("injected", "passthrough")
            or "body" not in svc.substitutions.in_
        ):
            fs.bytes_up = len(flow.request.raw_content or b"")
            return
        try:
            body = flow.request.raw_content or b""
            limit = self.core.settings.max_buffered_bytes
            if len(body) > limit:
                raise BodyTooLarge("the body is too large to substitute", limit_bytes=limit)
            assert fs.ident is not None
            view = self.core.runtime.snapshot.vaults[fs.ident.vault]
            allowed = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
            headers = flow.request.headers
            new, used = inject.substitute_body(
                body, headers.get("content-type"), headers.get("content-encoding"), allowed, allowed
            )
            if used:
                flow.request.raw_content = new
                headers["content-length"] = str(len(new))
                fs.substituted += [k for k in used if k not in fs.substituted]
                fs.add_secrets(svc, None, {k: allowed[k] for k in used})
            fs.bytes_up = len(new)
        except Exception as e:
            self._reject(flow, fs, e if isinstance(e, AgentVaultError) else incident(e))

    # ---- responses ------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Header hygiene and redaction; stream event streams and large or unsized bodies (SPEC §5.8)."""
        fs, resp = self.flows.get(flow.id), flow.response
        if fs is None or resp is None or fs.error is not None:
            return
        try:
            d = fs.decision
            svc = d.service if d is not None and d.kind in ("injected", "passthrough") else None
            inject.strip_response_headers(
                resp.headers, svc is not None and not svc.effective_forward_set_cookie
            )
            self._close_if_asked(flow)
            if fs.secrets and contains_secret(b"\n".join(v for _, v in resp.headers.fields), fs.secrets):
                for name in set(resp.headers.keys()):
                    red = [inject.redact_text(v, fs.secrets) for v in resp.headers.get_all(name)]
                    if any(keys for _, keys in red):
                        resp.headers.set_all(name, [v for v, _ in red])
                        for _, keys in red:
                            fs.redacted |= keys
            if resp.status_code < 200 or resp.status_code in (204, 304) or flow.request.method == "HEAD":
                return  # no body (a 101 becomes a WebSocket): nothing to stream or frame
            clen = _content_length(resp.headers)
            if (
                clen is None
                or clen > STREAM_THRESHOLD
                or "text/event-stream" in resp.headers.get("content-type", "")
            ):
                resp.stream = response_filter(fs, flow, self.core.settings.max_buffered_bytes)
        except Exception as e:  # fail closed: never hand an unscanned body over
            incident(e)
            flow.kill()  # type: ignore[no-untyped-call]

    def response(self, flow: http.HTTPFlow) -> None:
        fs, resp = self.flows.get(flow.id), flow.response
        try:
            if fs is not None and resp is not None and not is_proxy_answer(resp):
                if resp.status_code == 101 and flow.websocket is not None:
                    ws = ws_state(self.core.runtime, fs)
                    if ws is not None:
                        self.websockets[flow.id] = ws
                elif not resp.stream:
                    fs.redact_buffered(resp, self.core.settings.max_buffered_bytes)
                elif fs.error is not None:  # the streamed body failed after its headers went out
                    flow.kill()  # type: ignore[no-untyped-call]  # reset: never a "complete" body
                if resp.trailers is not None and fs.secrets:  # sent after this hook, streamed or not
                    redact_fields(resp.trailers, fs)
        except AgentVaultError as e:  # the body is over a limit (response_too_large): answer that
            flow.response = error_response(e)
            if fs is not None:
                fs.error = e.code
        except Exception as e:  # fail closed: replace what could not be checked
            flow.response = error_response(incident(e))
        self._close_if_asked(flow)
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.websockets.pop(flow.id, None)
        self._finish(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Substitute in client text messages (opt-in), redact server text messages (SPEC §5.8-§5.9)."""
        msg = trim_ws_history(flow)  # mitmproxy would keep every message of the connection
        ws = self.websockets.get(flow.id)
        if ws is None or msg is None:
            return
        try:
            ws_message(ws, msg)
        except Exception as e:  # fail closed
            incident(e)
            flow.kill()  # type: ignore[no-untyped-call]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.websockets.pop(flow.id, None)

    # ---- helpers --------------------------------------------------------------------------
    def _authenticate(self, proxy_auth: str | None, x_vault: str | None) -> Identity:
        key = (
            hashlib.sha256(proxy_auth.encode("utf-8", "surrogateescape")).hexdigest() if proxy_auth else None
        )
        if key is not None and self.limits.auth_failures.retry_after(key):
            raise RateLimited("too many failed proxy authentications", retry_after=60, limiter="proxy_auth")
        try:
            return authenticate(self.core.runtime.snapshot, proxy_auth, x_vault)
        except ProxyAuthRequired:
            if key is not None:  # a request without credentials is a challenge probe, not a failure
                self.limits.auth_failures.fail(key)
            raise

    def _bind(self, st: ConnState, ident: Identity) -> None:
        """Count this client connection against `ident`'s concurrent-connection limit (SPEC §5.10)."""
        if st.ident is not None and st.limits is not None:  # a second CONNECT, or another token
            st.limits.close(st.ident.digest)
        st.ident = st.limits = None
        limits = self._limits_for(ident.vault)
        if not limits.open(ident.digest):
            raise RateLimited("too many concurrent connections", retry_after=1, limiter="concurrent")
        st.ident, st.limits = ident, limits

    def _limits_for(self, vault: str) -> Limits:
        """The limiter set of `vault`'s profile (`vault settings --rate-limits`), else the server's."""
        view = self.core.runtime.snapshot.vaults.get(vault)
        profile = (
            view.rate_limits if view is not None and view.rate_limits else self.core.settings.rate_limits
        )
        limits = self._profiles.get(profile)
        if limits is None:
            limits = self._profiles[profile] = Limits(profile)
        return limits

    @staticmethod
    def _target(host: str, port: int) -> tuple[str, int]:
        try:
            return normalize_host(host), port
        except InvalidHost:
            raise BadRequest("the request target host is invalid", hint="Use a valid host name.") from None

    def _reject(self, flow: http.HTTPFlow, fs: FlowState, err: AgentVaultError) -> None:
        """Answer a request with a proxy error; the upstream is never contacted."""
        flow.request.stream = False
        flow.response = error_response(err)
        self._close_if_asked(flow)
        fs.error = err.code
        self.log.denied(fs, err)

    def _note_close(self, flow: http.HTTPFlow) -> None:
        """Remember an HTTP/1 client's `Connection: close` (or HTTP/1.0 without keep-alive) before
        header hygiene strips the hop-by-hop header mitmproxy's keep-alive decision reads."""
        req = flow.request
        if not (req.is_http2 or req.is_http3) and http1.connection_close(req.http_version, req.headers):  # type: ignore[no-untyped-call]
            st = self.conns.get(flow.client_conn.id)
            if st is not None:
                st.close = True

    def _close_if_asked(self, flow: http.HTTPFlow) -> None:
        """Answer `Connection: close` to a client that asked: mitmproxy then closes the connection
        after this response (RFC 9112 §9.6) instead of waiting for another request."""
        st = self.conns.get(flow.client_conn.id)
        if st is not None and st.close and flow.response is not None:
            flow.response.headers["connection"] = "close"

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


def _content_length(headers: http.Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None
