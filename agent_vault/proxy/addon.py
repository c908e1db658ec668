"""VaultAddon: the mitmproxy hooks, thin and fail-closed.

Each hook has ONE boundary try: an AgentVaultError becomes its SPEC §6 response; anything else
becomes 502 `internal` and the request is not forwarded (mitmproxy itself would fail open).
Dangers: injected values sit on the flow object until `_finish` scrubs them; they are never put
in `flow.metadata`, logs or exception messages.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection, http, tls
from mitmproxy.proxy import server_hooks

from agent_vault.audit import proxy_record
from agent_vault.core import Core
from agent_vault.errors import (
    AgentVaultError,
    BodyTooLarge,
    ProxyAuthRequired,
    ProxyInternal,
    RateLimited,
    SsrfBlocked,
    UpstreamDns,
    UpstreamTimeout,
    UpstreamTls,
    UpstreamUnreachable,
    VaultForbidden,
)
from agent_vault.metrics import Metrics, status_class
from agent_vault.proxy import inject
from agent_vault.proxy.decide import Decision, Identity, authenticate, decide, recheck, wants_mitm
from agent_vault.proxy.policy import InvalidHost, normalize_host
from agent_vault.proxy.ratelimit import Limits
from agent_vault.proxy.ssrf import Blocked, Guard, ResolveError, Resolver

log = logging.getLogger("agent_vault.proxy")
STREAM_THRESHOLD = 1 << 20


@dataclass(slots=True)
class ConnState:
    """Per client connection: the CONNECT identity and target, and SNI names for pinned IPs."""

    ident: Identity | None = None
    target: tuple[str, int] | None = None
    mode: str = "direct"  # direct | mitm | tunnel
    started: float = field(default_factory=time.monotonic)
    sni: dict[tuple[str, int], str] = field(default_factory=dict)


@dataclass(slots=True)
class FlowState:
    """Per request; holds secrets (`decision.injection`): never logged, dropped at the end."""

    ident: Identity
    host: str
    port: int
    path: str
    decision: Decision
    started: float
    substituted: list[str] = field(default_factory=list)
    redactor: inject.StreamRedactor | None = field(default=None, repr=False)
    redacted: set[str] = field(default_factory=set)
    redaction_skipped: bool = False
    bytes_down: int = 0


def error_response(err: AgentVaultError) -> http.Response:
    headers = {"Content-Type": "application/json", "X-Agent-Vault-Proxy-Error": "true"}
    if isinstance(err, ProxyAuthRequired):
        headers["Proxy-Authenticate"] = 'Basic realm="agent-vault"'
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(err.extra.get("retry_after", 1))
    return http.Response.make(err.status, json.dumps(err.body()).encode(), headers)


class VaultAddon:
    """The product's single mitmproxy addon."""

    def __init__(self, core: Core, metrics: Metrics) -> None:
        self.core = core
        self.metrics = metrics
        self.conns: dict[str, ConnState] = {}
        self.flows: dict[str, FlowState] = {}
        self.limits = Limits(core.settings.rate_limits)
        self.resolver = Resolver(Guard(core.settings.allow_net))
        self.resolver_overrides = core.extras.get("resolve", {})

    # ---- connection lifecycle -------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        self.conns[client.id] = ConnState()
        self.metrics.active_connections.inc()

    def client_disconnected(self, client: connection.Client) -> None:
        st = self.conns.pop(client.id, None)
        self.metrics.active_connections.dec()
        if st is None or st.ident is None:
            return
        self.limits.close(st.ident.digest)
        if st.mode == "tunnel" and st.target is not None:
            self.metrics.active_tunnels.dec()
            self._audit(
                proxy_record(
                    kind="proxy.tunnel",
                    actor=st.ident.principal.actor,
                    vault=st.ident.vault,
                    method="CONNECT",
                    scheme="tcp",
                    host=st.target[0],
                    port=st.target[1],
                    path=None,
                    service=None,
                    auth_type=None,
                    injected_keys=[],
                    substituted_keys=[],
                    redacted_keys=[],
                    decision="tunnel",
                    status=200,
                    error=None,
                    bytes_up=None,
                    bytes_down=None,
                    duration_ms=round((time.monotonic() - st.started) * 1000, 1),
                    http_version=None,
                )
            )

    # ---- CONNECT --------------------------------------------------------------------------
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            await self._connect(flow)
        except AgentVaultError as e:
            self._refuse(flow, e)
        except Exception as e:  # fail closed
            self._refuse(flow, self._incident(e))

    async def _connect(self, flow: http.HTTPFlow) -> None:
        st = self.conns.setdefault(flow.client_conn.id, ConnState())
        headers = flow.request.headers
        ident = self._authenticate(headers.get("proxy-authorization"), headers.get("x-vault"))
        host, port = self._target(flow.request.host, flow.request.port)
        view = self.core.runtime.snapshot.vaults[ident.vault]
        if not self.limits.open(ident.digest):
            raise RateLimited(
                "too many concurrent connections for this token", retry_after=1, limiter="concurrent"
            )
        st.ident, st.target = ident, (host, port)
        headers.pop("proxy-authorization", None)
        if wants_mitm(view, ident.policy, host, port):
            st.mode = "mitm"
            return
        ip = await self._checked_address(host, port)
        st.mode = "tunnel"
        self.metrics.active_tunnels.inc()
        flow.request.host = ip  # dial exactly the checked address

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        st = self.conns.get(data.context.client.id)
        if st is not None and st.mode == "tunnel":
            data.ignore_connection = True

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Upstream TLS verifies the CONNECT target / URL host, never the client's SNI."""
        st = self.conns.get(data.client.id)
        if st is not None and data.server.address is not None:
            name = st.sni.get(data.server.address)
            if name is not None:
                data.server.sni = name

    # ---- requests -------------------------------------------------------------------------
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            await self._request(flow)
        except AgentVaultError as e:
            self._reject(flow, e)
        except Exception as e:  # fail closed
            self._reject(flow, self._incident(e))

    async def _request(self, flow: http.HTTPFlow) -> None:
        t0 = time.perf_counter()
        req = flow.request
        st = self.conns.setdefault(flow.client_conn.id, ConnState())
        if st.ident is not None and st.target is not None:
            ident = recheck(self.core.runtime, st.ident)
            xv = req.headers.get("x-vault")
            if xv and xv != ident.vault:
                raise VaultForbidden(f"this connection is bound to vault {ident.vault}")
            host, port = st.target
        else:
            ident = self._authenticate(req.headers.get("proxy-authorization"), req.headers.get("x-vault"))
            host, port = self._target(req.host, req.port)
        limited = self.limits.request(ident.digest)
        if limited is not None:
            raise RateLimited(
                "request rate limit exceeded for this token",
                retry_after=max(1, round(limited[1])),
                limiter=limited[0],
            )
        view = self.core.runtime.snapshot.vaults[ident.vault]
        base = self.core.public_url
        decision = decide(
            view, ident, host, port, req.method, req.path, f"{base}/v1/proposals", f"{base}/v1/discover"
        )
        fs = FlowState(ident, host, port, req.path, decision, t0)
        self.flows[flow.id] = fs
        clen = req.headers.get("content-length")
        if clen and clen.isdigit() and int(clen) > self.core.settings.max_request_bytes:
            raise BodyTooLarge(
                "the request body is over the limit", limit_bytes=self.core.settings.max_request_bytes
            )
        svc = decision.service
        inj = decision.injection
        inject.strip_request_headers(req.headers, list(inj.headers) if inj else ())
        if inj is not None:
            req.path = inject.apply_injection(req.headers, req.path, inj)
            if svc is not None and svc.effective_redact:
                req.headers["accept-encoding"] = "identity"
        if svc is not None and decision.kind == "injected":
            allowed = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
            surfaces = svc.substitutions.in_
            req.path, fs.substituted = inject.substitute_request(req.headers, req.path, allowed, surfaces)
            if "body" not in surfaces and (clen is None or int(clen or 0) > STREAM_THRESHOLD):
                req.stream = True
        elif clen is None or int(clen or 0) > STREAM_THRESHOLD:
            req.stream = True
        ip = await self._checked_address(host, port)
        default_port = 443 if req.scheme == "https" else 80
        req.host = ip
        req.port = port
        req.host_header = host if port == default_port else f"{host}:{port}"
        if ip != host:
            st.sni[(ip, port)] = host
        self.metrics.added_latency.labels(decision.kind).observe(time.perf_counter() - t0)

    async def request(self, flow: http.HTTPFlow) -> None:
        """Only for buffered bodies of services that opted into body substitution."""
        fs = self.flows.get(flow.id)
        if fs is None or flow.response is not None or fs.decision.service is None:
            return
        svc = fs.decision.service
        if fs.decision.kind != "injected" or "body" not in svc.substitutions.in_:
            return
        try:
            body = flow.request.raw_content or b""
            if len(body) > self.core.settings.max_buffered_bytes:
                raise BodyTooLarge(
                    "the body is too large to substitute", limit_bytes=self.core.settings.max_buffered_bytes
                )
            view = self.core.runtime.snapshot.vaults[fs.ident.vault]
            allowed = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
            new, used = inject.substitute_body(
                body,
                flow.request.headers.get("content-type"),
                flow.request.headers.get("content-encoding"),
                allowed,
                allowed,
            )
            if used:
                flow.request.raw_content = new
                flow.request.headers["content-length"] = str(len(new))
                fs.substituted += [k for k in used if k not in fs.substituted]
        except AgentVaultError as e:
            self._reject(flow, e)
        except Exception as e:  # fail closed
            self._reject(flow, self._incident(e))

    # ---- responses ------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        fs = self.flows.get(flow.id)
        resp = flow.response
        if fs is None or resp is None:
            return
        try:
            svc = fs.decision.service
            injecting = fs.decision.kind == "injected"
            strip_cookie = injecting and svc is not None and not svc.effective_forward_set_cookie
            inject.strip_response_headers(resp.headers, strip_cookie)
            secrets = (
                fs.decision.injection.secrets
                if (fs.decision.injection and svc and svc.effective_redact)
                else []
            )
            if secrets:
                for name in list(resp.headers):
                    values = resp.headers.get_all(name)
                    red = [inject.redact_text(v, secrets) for v in values]
                    if any(keys for _, keys in red):
                        resp.headers.set_all(name, [v for v, _ in red])
                        for _, keys in red:
                            fs.redacted |= keys
            ctype = resp.headers.get("content-type", "")
            clen = resp.headers.get("content-length")
            big = clen is None or not clen.isdigit() or int(clen) > STREAM_THRESHOLD
            if "text/event-stream" in ctype or big:
                encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
                if secrets and not encoded:
                    fs.redactor = inject.StreamRedactor(secrets)
                    resp.stream = self._stream_filter(fs)
                else:
                    fs.redaction_skipped = bool(secrets)
                    resp.stream = self._counter(fs)
        except Exception as e:  # fail closed: never hand an unscanned body over
            self._incident(e)
            flow.kill()

    @staticmethod
    def _stream_filter(fs: FlowState) -> Any:
        redactor = fs.redactor
        assert redactor is not None

        def filt(chunk: bytes) -> bytes:
            fs.bytes_down += len(chunk)
            out = redactor.feed(chunk) if chunk else redactor.flush()
            return out

        return filt

    @staticmethod
    def _counter(fs: FlowState) -> Any:
        def count(chunk: bytes) -> bytes:
            fs.bytes_down += len(chunk)
            return chunk

        return count

    def response(self, flow: http.HTTPFlow) -> None:
        fs = self.flows.get(flow.id)
        try:
            if fs is not None and flow.response is not None and not flow.response.stream:
                inj = fs.decision.injection
                svc = fs.decision.service
                if inj and inj.secrets and svc and svc.effective_redact and flow.response.raw_content:
                    try:
                        flow.response.decode(strict=True)
                    except ValueError:
                        fs.redaction_skipped = True
                    else:
                        body, keys = inject.redact_bytes(flow.response.raw_content or b"", inj.secrets)
                        if keys:
                            flow.response.raw_content = body
                            flow.response.headers["content-length"] = str(len(body))
                            fs.redacted |= keys
                fs.bytes_down = len(flow.response.raw_content or b"")
        except Exception as e:  # fail closed
            self._incident(e)
            flow.response = error_response(ProxyInternal("the response could not be checked"))
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    # ---- helpers --------------------------------------------------------------------------
    def _authenticate(self, proxy_auth: str | None, x_vault: str | None) -> Identity:
        key = inject_key(proxy_auth)
        if key is not None and self.limits.auth_failures.retry_after(key):
            raise RateLimited("too many failed proxy authentications", retry_after=60, limiter="proxy_auth")
        try:
            return authenticate(self.core.runtime, proxy_auth, x_vault)
        except ProxyAuthRequired:
            if key is not None:
                self.limits.auth_failures.fail(key)
            raise

    def _target(self, host: str, port: int) -> tuple[str, int]:
        try:
            return normalize_host(host), port
        except InvalidHost:
            from agent_vault.errors import BadRequest

            raise BadRequest("the request target host is invalid", hint="Use a valid host name.") from None

    async def _checked_address(self, host: str, port: int) -> str:
        override = self.resolver_overrides.get(host)
        try:
            res = await self.resolver.resolve(override or host, port)
        except ResolveError:
            raise UpstreamDns(f"{host} does not resolve", cause="name not found") from None
        if isinstance(res, Blocked):
            raise SsrfBlocked(
                f"{host} resolves to {res.address} ({res.address_class})",
                address=res.address,
                address_class=res.address_class,
            )
        return str(res)

    def _incident(self, e: Exception) -> ProxyInternal:
        incident = uuid.uuid4().hex[:12]
        log.error("proxy incident %s: %s", incident, type(e).__name__)
        return ProxyInternal("internal proxy error; the request was not forwarded", incident=incident)

    def _refuse(self, flow: http.HTTPFlow, err: AgentVaultError) -> None:
        """Answer a CONNECT with an error (before any TLS)."""
        flow.response = error_response(err)
        st = self.conns.get(flow.client_conn.id)
        actor = st.ident.principal.actor if st and st.ident else "anonymous"
        vault = st.ident.vault if st and st.ident else None
        self._count_denial(vault, err)
        self._audit(
            proxy_record(
                kind="proxy.request",
                actor=actor,
                vault=vault,
                method="CONNECT",
                scheme="tcp",
                host=flow.request.host,
                port=flow.request.port,
                path=None,
                service=None,
                auth_type=None,
                injected_keys=[],
                substituted_keys=[],
                redacted_keys=[],
                decision="error" if err.status >= 500 else "denied",
                status=err.status,
                error=err.code,
                bytes_up=0,
                bytes_down=0,
                duration_ms=0.0,
                http_version=flow.request.http_version,
            )
        )

    def _reject(self, flow: http.HTTPFlow, err: AgentVaultError) -> None:
        """Answer a request with a proxy error; the upstream is never contacted."""
        flow.request.stream = False
        flow.response = error_response(err)
        fs = self.flows.get(flow.id)
        if fs is not None:
            fs.decision = Decision("denied" if err.status < 500 else "error")
            fs.decision.would_deny_code = err.code
        self._count_denial(fs.ident.vault if fs else None, err)

    def _count_denial(self, vault: str | None, err: AgentVaultError) -> None:
        if isinstance(err, RateLimited):
            self.metrics.rate_limited.labels(err.extra.get("limiter", "unknown")).inc()
        self.metrics.denials.labels(vault or "", err.code).inc()

    def _finish(self, flow: http.HTTPFlow) -> None:
        """Audit, count, and scrub injected values from the flow object."""
        fs = self.flows.pop(flow.id, None)
        req = flow.request
        inj = fs.decision.injection if fs else None
        if inj is not None:
            for name in inj.headers:
                if name in req.headers:
                    req.headers[name] = "[scrubbed]"
            if inj.query:
                req.path = inject.set_query_params(req.path, dict.fromkeys(inj.query, "scrubbed"))
        if fs is None:
            return
        d = fs.decision
        status = flow.response.status_code if flow.response else None
        error_code = None
        if flow.response is not None and flow.response.headers.get("x-agent-vault-proxy-error") == "true":
            error_code = d.would_deny_code
        elif flow.error is not None:
            error_code = upstream_error_code(flow.error.msg)
        decision = d.kind if error_code is None or d.kind in ("denied", "error") else "error"
        svc = d.service
        record = proxy_record(
            kind="proxy.request",
            actor=fs.ident.principal.actor,
            vault=fs.ident.vault,
            method=req.method,
            scheme=req.scheme,
            host=fs.host,
            port=fs.port,
            path=fs.path,
            service=svc.name if svc else None,
            auth_type=svc.auth.type if svc else None,
            injected_keys=list(inj.used_keys) if inj else [],
            substituted_keys=fs.substituted,
            redacted_keys=sorted(fs.redacted),
            decision=decision,
            status=status,
            error=error_code,
            bytes_up=len(req.raw_content or b"") if not req.stream else None,
            bytes_down=fs.bytes_down,
            duration_ms=round((time.perf_counter() - fs.started) * 1000, 2),
            http_version=req.http_version,
            would_deny_code=d.would_deny_code if d.kind == "would_deny" else None,
            redaction="skipped" if fs.redaction_skipped else None,
        )
        self._audit(record)
        m = self.metrics
        m.requests.labels(fs.ident.vault, decision, status_class(status)).inc()
        m.duration.labels(decision).observe(time.perf_counter() - fs.started)
        if decision == "injected" and svc is not None:
            m.injections.labels(fs.ident.vault, svc.auth.type).inc()
        if fs.redacted:
            m.redactions.labels(fs.ident.vault).inc()

    def _audit(self, record: dict[str, Any]) -> None:
        self.core.audit.submit(record)


def inject_key(proxy_auth: str | None) -> str | None:
    """The failed-auth limiter key: sha256 of the presented credential (never the credential)."""
    if not proxy_auth:
        return None
    import hashlib

    return hashlib.sha256(proxy_auth.encode("utf-8", "surrogateescape")).hexdigest()


def upstream_error_code(msg: str) -> str:
    low = msg.lower()
    if "certificate" in low or "tls" in low or "ssl" in low:
        return UpstreamTls.code
    if "timeout" in low or "timed out" in low:
        return UpstreamTimeout.code
    if "name or service" in low or "getaddrinfo" in low or "resolve" in low:
        return UpstreamDns.code
    return UpstreamUnreachable.code
