"""Who is on a client connection: identity, limits and how the connection is relayed (SPEC §5.2,
§5.3, §5.10).

`Connections` keeps one `ConnState` per client connection: the identity bound by CONNECT (or by the
first absolute-form request), the normalised target, whether it is MITM'd or a raw tunnel, and the
limiter set it is counted in. It enforces the pre-auth bounds (at most `--max-unauthenticated`
connections without an identity, `--auth-timeout` seconds to get one), the failed-auth limiter, the
concurrent-connection limit per token, HTTP/1 `Connection: close`, and closes the tunnels of
revoked tokens. Loop-thread only; raises AgentVaultError for the caller's fail-closed boundary.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mitmproxy import connection, http
from mitmproxy.net.http import http1

from agent_vault.core import Core
from agent_vault.errors import AgentVaultError, BadRequest, ProxyAuthRequired, RateLimited
from agent_vault.hostpath import InvalidHost, normalize_host
from agent_vault.metrics import Metrics
from agent_vault.proxy import live
from agent_vault.proxy.decide import Identity, authenticate, recheck, wants_mitm
from agent_vault.proxy.flowlog import FlowLog
from agent_vault.proxy.live import ByteCounter
from agent_vault.proxy.ownapi import own_api_address
from agent_vault.proxy.ssrf import Egress
from agent_vault.ratelimit import Limits


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
    expiry: asyncio.TimerHandle | None = None  # a tunnel: closes it when its token expires


def normalized_target(host: str, port: int) -> tuple[str, int]:
    """The request target as matching sees it; 400 `bad_request` for a host that cannot be one."""
    try:
        return normalize_host(host), port
    except InvalidHost:
        raise BadRequest("the request target host is invalid", hint="Use a valid host name.") from None


class Connections:
    """The client connections of one proxy (see the module docstring)."""

    def __init__(self, core: Core, metrics: Metrics, log: FlowLog, egress: Egress) -> None:
        self.core, self.metrics, self.log, self.egress = core, metrics, log, egress
        self.table: dict[str, ConnState] = {}
        self.unauthenticated: set[str] = set()  # client ids with no identity bound yet (pre-auth)
        self.limits = Limits(core.settings.rate_limits)  # the server's profile; failed auth always
        self._profiles: dict[str, Limits] = {core.settings.rate_limits: self.limits}

    def get(self, client_id: str) -> ConnState | None:
        return self.table.get(client_id)

    def bound_to(self, token_id: int) -> int:
        """How many open client connections are bound to the token with this id."""
        return sum(
            1
            for st in self.table.values()
            if st.ident is not None and st.ident.principal.token_id == token_id
        )

    # ---- lifecycle ------------------------------------------------------------------------------
    def connected(self, client: connection.Client) -> None:
        """Pre-auth bounds: over `max_unauthenticated` the connection is closed unread; each one gets
        `auth_timeout` seconds to authenticate, then it is closed."""
        settings = self.core.settings
        if len(self.unauthenticated) >= settings.max_unauthenticated:
            client.error = "too many unauthenticated connections"  # mitmproxy closes it unread
            return
        self.table[client.id] = ConnState()
        self.unauthenticated.add(client.id)
        self.metrics.active_connections.inc()
        asyncio.get_running_loop().call_later(settings.auth_timeout, self._auth_deadline, client.id)

    def _auth_deadline(self, client_id: str) -> None:
        if client_id in self.unauthenticated:
            live.close_client(client_id)

    def disconnected(self, client: connection.Client) -> None:
        """Release the connection's limits; a tunnel gets its audit record (bytes relayed, duration)."""
        self.unauthenticated.discard(client.id)
        st = self.table.pop(client.id, None)
        if st is None:
            return
        if st.expiry is not None:
            st.expiry.cancel()
        self.metrics.active_connections.dec()
        if st.ident is not None:
            if st.limits is not None:
                st.limits.close(st.ident.digest)
            if st.mode == "tunnel" and st.target is not None:
                self.metrics.active_tunnels.dec()
                self.log.tunnel(st.ident, st.target, time.monotonic() - st.started, st.relayed)

    async def connect(self, flow: http.HTTPFlow, ident: Identity) -> None:
        """CONNECT by `ident` (authenticated by the caller): decide MITM or tunnel from the target,
        before any TLS (SPEC §5.3); a tunnel's target passes the SSRF guard before the 200."""
        st = self.table.setdefault(flow.client_conn.id, ConnState())
        host, port = normalized_target(flow.request.host, flow.request.port)
        mitm = wants_mitm(self.core.runtime.snapshot.vaults[ident.vault], ident.policy, host, port)
        if not mitm and own_api_address(self.core.api_url, flow.client_conn.peername, host, port) is None:
            await self.egress.address(host, port)  # (agent-vault's own API is dialled as such: ownapi)
        self.bind(flow.client_conn.id, st, ident)
        st.target, st.mode = (host, port), ("mitm" if mitm else "tunnel")
        flow.request.host = host  # normalised; server_connect pins the checked address
        if not mitm:
            self.metrics.active_tunnels.inc()
            self._watch_expiry(flow.client_conn.id, st, ident)

    # ---- identity and limits --------------------------------------------------------------------
    def authenticate(self, proxy_auth: str | None, x_vault: str | None) -> Identity:
        """SPEC §5.2 with the failed-auth limiter (keyed by the presented credential's digest; a
        request without credentials is a challenge probe, never a failure)."""
        if self.core.services.freshness is not None:
            self.core.services.freshness.require()  # a stale replica takes no new connection (503)
        key = (
            hashlib.sha256(proxy_auth.encode("utf-8", "surrogateescape")).hexdigest() if proxy_auth else None
        )
        wait = self.limits.auth_failures.retry_after(key) if key is not None else 0
        if wait:  # the real wait (up to the limiter's window), so a client that honours it gets in
            raise RateLimited("too many failed proxy authentications", retry_after=wait, limiter="proxy_auth")
        try:
            ident = authenticate(self.core.runtime.snapshot, proxy_auth, x_vault)
        except ProxyAuthRequired:
            if key is not None:
                self.limits.auth_failures.fail(key)
            raise
        self.core.services.last_used.note(ident.principal)
        return ident

    def bind(self, client_id: str, st: ConnState, ident: Identity) -> None:
        """Count this client connection against `ident`'s concurrent-connection limit (SPEC §5.10);
        from then on it is authenticated (no pre-auth deadline)."""
        if st.ident is not None and st.limits is not None:  # a second CONNECT, or another token
            st.limits.close(st.ident.digest)
        st.ident = st.limits = None
        limits = self.limits_for(ident.vault)
        if not limits.open(ident.digest):
            raise RateLimited("too many concurrent connections", retry_after=1, limiter="concurrent")
        st.ident, st.limits = ident, limits
        self.unauthenticated.discard(client_id)

    def limits_for(self, vault: str) -> Limits:
        """The limiter set of `vault`'s profile (`vault settings --rate-limits`), else the server's."""
        view = self.core.runtime.snapshot.vaults.get(vault)
        profile = (
            view.rate_limits if view is not None and view.rate_limits else self.core.settings.rate_limits
        )
        limits = self._profiles.get(profile)
        if limits is None:
            limits = self._profiles[profile] = Limits(profile)
        return limits

    def _watch_expiry(self, client_id: str, st: ConnState, ident: Identity) -> None:
        """A tunnel relays raw bytes, so no request re-checks its token: close it when the token expires
        (a session's TTL is the dead-man switch, SPEC §7.1), or later if it was renewed meanwhile."""
        if st.expiry is not None:
            st.expiry.cancel()
            st.expiry = None
        expires = ident.principal.expires_at
        if expires is not None:
            delay = max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05
            st.expiry = asyncio.get_running_loop().call_later(delay, self._tunnel_expired, client_id)

    def _tunnel_expired(self, client_id: str) -> None:
        st = self.table.get(client_id)
        if st is not None and st.mode == "tunnel" and st.ident is not None:
            st.expiry = None
            self._recheck_tunnel(client_id, st, rearm=True)

    def close_revoked_tunnels(self) -> None:
        """SPEC §3.1: close the tunnels of revoked tokens (MITM'd requests are re-checked anyway)."""
        for client_id, st in list(self.table.items()):
            if st.mode == "tunnel" and st.ident is not None:
                self._recheck_tunnel(client_id, st, rearm=False)

    def _recheck_tunnel(self, client_id: str, st: ConnState, *, rearm: bool) -> None:
        """Close the tunnel if its token no longer passes; else watch its expiry again when it changed
        (a renewal, or a shorter life) or when `rearm` (its timer just fired)."""
        assert st.ident is not None
        try:
            ident = recheck(self.core.runtime.snapshot, st.ident)
        except AgentVaultError:
            live.close_client(client_id)
            return
        if rearm or ident is not st.ident:
            st.ident = ident
            self._watch_expiry(client_id, st, ident)

    # ---- HTTP/1 Connection: close ---------------------------------------------------------------
    def note_close(self, flow: http.HTTPFlow) -> None:
        """Remember an HTTP/1 client's `Connection: close` (or HTTP/1.0 without keep-alive) before
        header hygiene strips the hop-by-hop header mitmproxy's keep-alive decision reads."""
        req = flow.request
        if req.is_http2 or req.is_http3:
            return
        if http1.connection_close(req.http_version, req.headers):  # type: ignore[no-untyped-call]
            st = self.table.get(flow.client_conn.id)
            if st is not None:
                st.close = True

    def close_if_asked(self, flow: http.HTTPFlow) -> None:
        """Answer `Connection: close` to a client that asked: mitmproxy then closes the connection
        after this response (RFC 9112 §9.6) instead of waiting for another request."""
        st = self.table.get(flow.client_conn.id)
        if st is not None and st.close and flow.response is not None:
            flow.response.headers["connection"] = "close"
