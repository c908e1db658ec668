"""The request decision and injection (SPEC §5.2-§5.7, §5.10), in the order a request meets them:
identity (the connection's, re-checked, or the request's own), rate and size limits, the decision
(`decide`, pure), the SSRF check, brokered credentials (`brokered`: an OAuth2 token fetch or AWS keys,
awaited), placeholder substitution, header hygiene, injection, and how the body travels (streamed and
counted, cut past the limit, or read whole for body substitution or a SigV4 payload hash: never
streamed then, whatever its size, and refused with 413 past min(--max-buffered-bytes,
--max-request-bytes); SigV4 also caps it at `SIGN_BUFFER`).

Everything raises AgentVaultError (or lets a surprise through) for the addon's fail-closed boundary;
nothing here answers the client itself. Danger: after `headers()` the flow carries injected values:
the addon scrubs them when the flow ends.
"""

from __future__ import annotations

import time

from mitmproxy import http
from mitmproxy.net.http import url

from agent_vault.authtypes import BROKERED_AUTH_TYPES
from agent_vault.core import Core
from agent_vault.errors import (
    BadRequest,
    BodyTooLarge,
    HoldInterrupted,
    RateLimited,
    ServiceNotAllowed,
    VaultForbidden,
)
from agent_vault.metrics import Metrics
from agent_vault.proxy import hygiene, inject
from agent_vault.proxy.brokered import SIGN_BUFFER, Broker
from agent_vault.proxy.connections import Connections, normalized_target
from agent_vault.proxy.decide import Decision, Identity, decide, recheck
from agent_vault.proxy.engine import BUFFER_WHOLE
from agent_vault.proxy.flowlog import FlowState
from agent_vault.proxy.guard import Guard
from agent_vault.proxy.ownapi import own_api_address
from agent_vault.proxy.sources import SourceResolver
from agent_vault.proxy.ssrf import Egress
from agent_vault.proxy.streams import buffer_whole, counter, limited_upload
from agent_vault.servicedef import ServiceDef

STREAM_THRESHOLD = 1 << 20  # bodies larger than this (or of unknown length) are streamed, not buffered


def content_length(headers: http.Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def origin_form(req: http.Request, target: tuple[str, int]) -> None:
    """An HTTP/1 request inside a CONNECT tunnel in absolute form (`GET https://host/path`) is sent on in
    origin form (`GET /path`), and only when its URL names the tunnel's target (400 otherwise). An origin
    server routes by the request line's authority before Host (RFC 9112 §3.2.2): forwarded as it came,
    the absolute form would let the agent choose which virtual host of the upstream receives the
    credential injected for the CONNECT target."""
    if not req.authority or req.method == "CONNECT" or not req.http_version.startswith("HTTP/1"):
        return
    try:
        host, port = url.parse_authority(req.authority, check=True)
        same = normalized_target(host, port or url.default_port(req.scheme) or 443) == target
    except (ValueError, BadRequest):
        same = False
    if not same:
        raise BadRequest(
            "the request's absolute URL names another host than its CONNECT target",
            hint="Send the path only (origin form), or CONNECT to the host the URL names.",
        )
    req.authority = ""


class RequestPhase:
    def __init__(self, core: Core, metrics: Metrics, conns: Connections, egress: Egress) -> None:
        self.core, self.metrics, self.conns, self.egress = core, metrics, conns, egress
        self.broker = Broker(core, egress)
        self.sources = SourceResolver()
        # exfiltration checks, quotas, token budgets; `guard.on_exfiltration` announces blocks
        self.guard = Guard(metrics, core.services.quotas, core.services.usage)

    def _identity(self, flow: http.HTTPFlow, fs: FlowState) -> tuple[Identity, str, int]:
        """The caller and the target: the connection's (bound by CONNECT, re-checked so revocation
        applies to the very next request), or the absolute-form request's own."""
        req = flow.request
        st = self.conns.get(flow.client_conn.id)
        if st is not None and st.ident is not None and st.target is not None:
            if self.core.services.freshness is not None:  # (`authenticate` checks it otherwise)
                self.core.services.freshness.require()  # a stale replica forwards nothing (503)
            fs.ident = st.ident  # a refusal below is recorded for the identity the connection had
            fs.ident = ident = st.ident = recheck(self.core.runtime.snapshot, st.ident)
            xv = req.headers.get("x-vault")
            if xv and xv != ident.vault:
                raise VaultForbidden(f"this connection is bound to vault {ident.vault}")
            origin_form(req, st.target)
            host, port = st.target
            return ident, host, port
        fs.ident = ident = self.conns.authenticate(
            req.headers.get("proxy-authorization"), req.headers.get("x-vault")
        )
        host, port = normalized_target(req.host, req.port)
        if st is not None and (st.ident is None or st.ident.digest != ident.digest):
            self.conns.bind(flow.client_conn.id, st, ident)  # absolute-form: counts for its token too
        return ident, host, port

    async def headers(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        """`requestheaders`: decide, then substitute and inject (SPEC §5.4-§5.7)."""
        req = flow.request
        ident, host, port = self._identity(flow, fs)
        fs.host, fs.port = host, port
        limited = self.conns.limits_for(ident.vault).request(ident.digest)
        if limited is not None:
            limiter, wait = limited
            raise RateLimited("request rate limit exceeded", retry_after=max(1, round(wait)), limiter=limiter)
        clen = content_length(req.headers)
        limit = self.core.settings.max_request_bytes
        if clen is not None and clen > limit:
            raise BodyTooLarge("the request body is over the limit", limit_bytes=limit)
        view = self.core.runtime.snapshot.vaults[ident.vault]
        if view.sources:  # dynamic values the matched service needs (commands, files; issue #16)
            view, fs.sources = await self.sources.overlay(view, host, port, req.method, req.path, req.scheme)
            fs.values = view.values
        base = self.core.public_url
        own_api = own_api_address(self.core.api_url, flow.client_conn.peername, host, port)
        try:
            d = decide(
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
        except ServiceNotAllowed:
            if own_api is None:
                raise
            d = Decision("unmatched_passthrough")  # agent-vault's own API, from this machine (ownapi)
        if own_api is not None and d.kind == "would_deny" and d.would_deny_code == ServiceNotAllowed.code:
            d = Decision("unmatched_passthrough")
        fs.decision = d
        self.guard.head(flow, fs, view, d)  # before DNS and before any upstream connection
        self.guard.quota(fs, view, d)
        self.guard.budget(flow, view, d)
        self.guard.learn(view, d, host, port, req.method)
        if own_api is None:  # else dialled at the API's own address (server_connect)
            await self.egress.address(host, port)
        svc, inj = d.service, d.injection
        if inj is not None and svc is not None and svc.auth.type in BROKERED_AUTH_TYPES:
            fs.signing = await self.broker.prepare(view, svc, inj)  # OAuth2 token fetch, AWS keys
        matched = svc is not None and d.kind in ("injected", "passthrough")
        if matched and svc is not None and svc.approval is not None:
            await self._hold(flow, ident, svc, host, port)
        surfaces = svc.substitutions.in_ if svc is not None else []
        if matched and svc is not None:
            allowed = {k: view.values[k] for k in svc.substitution_keys if k in view.values}
            req.path, fs.substituted = inject.substitute_request(req.headers, req.path, allowed, surfaces)
            fs.add_secrets(svc, inj, {k: allowed[k] for k in fs.substituted})
            if "websocket" in surfaces:
                req.headers.pop("sec-websocket-extensions", None)
        hygiene.strip_request_headers(req.headers, list(inj.headers) if inj else ())
        if inj is not None:
            req.path = inject.apply_injection(req.headers, req.path, inj)
            fs.injected = True  # from here on the record names the keys, even if the request then fails
        if fs.secrets:
            req.headers["accept-encoding"] = "identity"
        if fs.signing is not None and not self.broker.plan(flow, fs.signing, host, port, clen):
            fs.signing = None  # signed already (empty body, or UNSIGNED-PAYLOAD)
        if (matched and "body" in surfaces) or fs.signing is not None:
            self._buffer_whole(flow, fs, clen, substitute=matched and "body" in surfaces)
        else:
            upload = None
            if clen is None:  # chunked or HTTP/2 without a length: cut when it crosses the limit
                upload = limited_upload(fs, limit)
            elif clen > STREAM_THRESHOLD:
                upload = counter(fs, up=True)
            if upload is not None:  # streamed: scanned chunk by chunk (guard)
                req.stream = self.guard.upload(fs, view, d, upload) or upload
        if req.host != host or req.port != port:  # the setters are costly; usually equal already
            req.host, req.port = host, port
        host_header = url.hostport(req.scheme, host, port)
        if req.host_header != host_header:
            req.host_header = host_header
        self.metrics.added_latency.observe((d.kind,), time.perf_counter() - fs.started)

    def _buffer_whole(
        self, flow: http.HTTPFlow, fs: FlowState, clen: int | None, *, substitute: bool
    ) -> None:
        """SPEC §5.6: the body is read whole (not streamed past 1 MiB, which would forward it with
        its placeholders unsubstituted or unsigned); over the limit, by its length now or while it
        arrives, 413 `body_too_large` with `limit_bytes`."""
        settings = self.core.settings
        limit = min(settings.max_buffered_bytes, settings.max_request_bytes)
        if fs.signing is not None:  # brokered.plan: a larger body is signed UNSIGNED-PAYLOAD or refused
            limit = min(limit, SIGN_BUFFER)
        message = f"the body is too large to {'substitute' if substitute else 'sign'}"
        if clen is not None and clen > limit:
            raise BodyTooLarge(message, limit_bytes=limit)
        flow.request.stream = False  # the engine set it for a length over 1 MiB
        flow.metadata[BUFFER_WHOLE] = buffer_whole(fs, limit, message)

    async def _hold(
        self, flow: http.HTTPFlow, ident: Identity, svc: ServiceDef, host: str, port: int
    ) -> None:
        """Issue 19: wait (without blocking the loop) until a human approves; raise when they deny,
        time runs out or the server stops. Nothing has been injected or dialled yet."""
        holds = self.core.services.holds
        if holds is None:  # fail closed: a flagged service is never forwarded unapproved
            raise HoldInterrupted("approval holds are not available in this process")
        hold = await holds.gate(
            vault=ident.vault,
            svc=svc,
            agent=ident.principal.owner,
            actor=ident.principal.actor,
            method=flow.request.method,
            host=host,
            port=port,
            path=flow.request.path,
            client_id=flow.client_conn.id,
        )
        if hold is not None:  # approved after a wait: the token may have been revoked meanwhile
            recheck(self.core.runtime.snapshot, ident)

    def body(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        """`request`: substitute placeholders in a buffered body, only for services that opted in
        (SPEC §5.6), otherwise just count it; then sign it (aws-sigv4). A buffered body is scanned
        for vault values first (guard), before the upstream is dialled."""
        trailers = flow.request.trailers  # sent after this hook: the same hygiene as the head's
        if trailers is not None:
            inj = fs.decision.injection if fs.decision is not None else None
            hygiene.strip_trailers(
                trailers, hygiene.REQUEST_ONLY | {n.lower() for n in (inj.headers if inj else ())}
            )
        if fs.ident is not None:
            self.guard.body(flow, fs, self.core.runtime.snapshot.vaults[fs.ident.vault])
        self._substitute_body(flow, fs)
        if fs.signing is not None:
            self.broker.sign_buffered(flow, fs.signing)

    def _substitute_body(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        svc = fs.decision.service if fs.decision is not None else None
        if (
            svc is None
            or fs.decision is None
            or fs.decision.kind not in ("injected", "passthrough")
            or "body" not in svc.substitutions.in_
        ):
            fs.bytes_up = len(flow.request.raw_content or b"")
            return
        body = flow.request.raw_content or b""
        limit = self.core.settings.max_buffered_bytes
        if len(body) > limit:
            raise BodyTooLarge("the body is too large to substitute", limit_bytes=limit)
        assert fs.ident is not None
        have = (
            fs.values if fs.values is not None else self.core.runtime.snapshot.vaults[fs.ident.vault].values
        )
        allowed = {k: have[k] for k in svc.substitution_keys if k in have}
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
