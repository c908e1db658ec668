"""Guardrails on the request path (issue #20): exfiltration blocking, and the hook that announces it.

The request phase calls `Guard.head` right after the decision (before DNS, before any upstream
connection), `Guard.body` on a buffered body (the `request` hook, before the upstream is dialled),
and `Guard.upload` wraps a streamed body. A credential of the vault, in any form `exfil` knows,
headed to a host that is not a service referencing its key, is refused with 403
`exfiltration_blocked`: counted in `/metrics`, audited by key NAME and host, and announced through
`on_exfiltration` (a no-op until the server connects the webhook emitter).

Danger: works on secret bytes; raises and announces key names and hosts only. The audited path of a
blocked request is scrubbed of every needle (`exfil.scrub`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from agent_vault.domain.learn import Learner
from agent_vault.errors import BudgetExceeded, ExfiltrationBlocked, QuotaExceeded
from agent_vault.metrics import Metrics
from agent_vault.proxy import exfil
from agent_vault.proxy.decide import Decision, Identity
from agent_vault.proxy.engine import BodyOverLimit
from agent_vault.proxy.flowlog import FlowState
from agent_vault.quota import QuotaCounter, parse_quota
from agent_vault.snapshot import VaultView
from agent_vault.usage import UsageMeter, UsageParser, parse_budget

log = logging.getLogger("agent_vault.proxy")

ExfilHook = Callable[[dict[str, Any]], None]
Filter = Callable[[bytes], bytes]
StreamFn = Callable[[bytes], bytes | list[bytes]]


def _noop(_event: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class WsScan:
    """What scanning an upgraded WebSocket's client messages needs (names only)."""

    vault: str
    actor: str
    host: str
    port: int
    allowed: frozenset[str]


def ws_scan(fs: FlowState) -> WsScan | None:
    """The scan context of a request that upgraded to a WebSocket, or None without an identity."""
    if fs.ident is None or fs.decision is None:
        return None
    d = fs.decision
    allowed = exfil.allowed_keys(d.service if d.kind in ("injected", "passthrough") else None)
    return WsScan(fs.ident.vault, fs.ident.principal.actor, fs.host, fs.port, allowed)


def quota_key(vault: str, service: str, ident: Identity) -> tuple[str, str, str]:
    """The quota counter of one agent token on one service (token id, never the token)."""
    return (vault, service, f"{ident.principal.kind}:{ident.principal.token_id}")


class Guard:
    """Exfiltration checks and request quotas for one proxy. `on_exfiltration(event)` receives
    `{"vault", "agent", "key", "host", "kind"}` (names only) for every blocked request."""

    def __init__(self, metrics: Metrics, quotas: QuotaCounter, usage: UsageMeter) -> None:
        self.metrics = metrics
        self.quotas = quotas
        self.usage = usage
        self.learner = Learner()  # learn mode: unknown hosts, drafted off the loop (addon flusher)
        self.on_exfiltration: ExfilHook = _noop

    def learn(self, view: VaultView, d: Decision, host: str, port: int, method: str) -> None:
        """Learn mode: note a request to a host no service matches (one draft per host, later)."""
        if view.enforcement != "learn":
            return
        if d.kind == "unmatched_passthrough" or (
            d.kind == "would_deny" and d.would_deny_code == "service_not_allowed"
        ):
            self.learner.note(view.name, host, port, method)

    def budget(self, flow: http.HTTPFlow, view: VaultView, d: Decision) -> None:
        """A service whose token budget is spent for this window: 429 `budget_exceeded` until it rolls.
        Otherwise ask the upstream for an uncompressed answer, so its usage can be read as it passes."""
        svc = d.service
        if svc is None or svc.token_budget is None or d.kind not in ("injected", "passthrough"):
            return
        b = parse_budget(svc.token_budget)
        if self.usage.used(view.name, svc.name, b) >= b.limit:
            raise BudgetExceeded(
                f"service {svc.name} has spent its token budget of {b} tokens",
                retry_after=math.ceil(b.seconds_left(time.time())),
                limiter="budget",
                service=svc.name,
                budget=str(b),
            )
        flow.request.headers["accept-encoding"] = "identity"

    def quota(self, fs: FlowState, view: VaultView, d: Decision) -> None:
        """Count a request to a service with a quota; over it, 429 `quota_exceeded` + Retry-After."""
        svc = d.service
        if svc is None or svc.quota is None or fs.ident is None or d.kind not in ("injected", "passthrough"):
            return
        rate = parse_quota(svc.quota)
        wait = self.quotas.take(quota_key(view.name, svc.name, fs.ident), rate)
        if wait is not None:
            raise QuotaExceeded(
                f"service {svc.name} allows {rate} requests per agent token; this window is spent",
                retry_after=max(1, math.ceil(wait)),
                limiter="quota",
                service=svc.name,
                quota=str(rate),
            )

    def _block(
        self, fs: FlowState, view: VaultView, m: exfil.Matcher, found: exfil.Finding
    ) -> ExfiltrationBlocked:
        fs.blocked_key = found.key
        fs.path = exfil.scrub(fs.path, m)
        fs.host = exfil.scrub(fs.host, m)  # a value in a host label must not reach the audit either
        agent = fs.ident.principal.actor if fs.ident is not None else None
        self.announce(view.name, agent, found, fs.host)
        what = {"value": "credential", "placeholder": "placeholder of credential", "canary": "canary for"}
        return ExfiltrationBlocked(
            f"exfiltration blocked: the request carries the {what[found.kind]} {found.key} to {fs.host}, "
            "which is not a service using that key",
            key=found.key,
            host=fs.host,
        )

    def announce(self, vault: str, agent: str | None, found: exfil.Finding, host: str) -> None:
        """Count a block in /metrics and hand `{vault, agent, key, host, kind}` to the hook."""
        self.metrics.child(self.metrics.exfiltration_blocked, vault, found.kind).inc()
        event = {"vault": vault, "agent": agent, "key": found.key, "host": host, "kind": found.kind}
        try:
            self.on_exfiltration(event)
        except Exception as e:  # a notifier must never open the gate; logged by type only
            log.error("exfiltration hook failed: %s", type(e).__name__)

    def websocket(self, view: VaultView | None, ws: WsScan, content: bytes) -> exfil.Finding | None:
        """Scan one client WebSocket message of an intercepted connection; a find is announced
        (the caller closes the connection and audits it)."""
        if view is None:
            return None
        m = exfil.matcher_for(view)
        found = None if m.empty else m.scan(content, ws.allowed)
        if found is not None:
            self.announce(view.name, ws.actor, found, exfil.scrub(ws.host, m))
        return found

    def head(self, flow: http.HTTPFlow, fs: FlowState, view: VaultView, d: Decision) -> None:
        """Scan the target host, path, query and headers as the agent sent them."""
        m = exfil.matcher_for(view)
        if m.empty:
            return
        req = flow.request
        allowed = exfil.allowed_keys(d.service if d.kind in ("injected", "passthrough") else None)
        found = m.scan(exfil.head_blob(fs.host, req.data.path, req.headers.fields), allowed)
        if found is not None:
            raise self._block(fs, view, m, found)

    def body(self, flow: http.HTTPFlow, fs: FlowState, view: VaultView) -> None:
        """Scan a buffered body (at most STREAM_THRESHOLD bytes) before the upstream is dialled."""
        m = exfil.matcher_for(view)
        body = flow.request.raw_content
        if m.empty or not body or fs.decision is None:
            return
        d = fs.decision
        allowed = exfil.allowed_keys(d.service if d.kind in ("injected", "passthrough") else None)
        found = m.scan(body, allowed)
        if found is not None:
            raise self._block(fs, view, m, found)

    def upload(self, fs: FlowState, view: VaultView, d: Decision, inner: Filter | None) -> StreamFn | None:
        """Wrap a streamed upload: scan chunk by chunk, holding back a tail that could start a needle
        (so no byte of a value split across chunks goes out); on a find, cut the request (the engine
        resets the upstream request and answers 403)."""
        m = exfil.matcher_for(view)
        if m.empty:
            return inner
        allowed = exfil.allowed_keys(d.service if d.kind in ("injected", "passthrough") else None)
        scanner = exfil.UploadScanner(m, allowed)

        def scan(chunk: bytes) -> bytes | list[bytes]:
            out = scanner.feed(chunk) if chunk else scanner.finish()
            if scanner.finding is not None:
                err = self._block(fs, view, m, scanner.finding)
                fs.error = err.code
                raise BodyOverLimit(0, error=err)
            passed = inner(out) if inner is not None else out
            return passed if passed else []

        return scan


def _budgeted(fs: FlowState) -> tuple[str, str, str] | None:
    d = fs.decision
    svc = d.service if d is not None and d.kind in ("injected", "passthrough") else None
    if svc is None or svc.token_budget is None or fs.ident is None:
        return None
    return fs.ident.vault, svc.name, svc.token_budget


def meter_response(usage: UsageMeter, metrics: Metrics | None, flow: http.HTTPFlow, fs: FlowState) -> None:
    """`responseheaders` of a budgeted service: tap a streamed body (SSE or other) to count its
    usage as it passes; never buffers (the parser keeps one bounded line). Buffered bodies are
    counted by `meter_body`."""
    target = _budgeted(fs)
    resp = flow.response
    if target is None or resp is None or not callable(resp.stream):
        return
    if resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return  # not readable without decoding; the request asked for identity
    parser = UsageParser("text/event-stream" in resp.headers.get("content-type", ""))
    count = _counter(usage, metrics, fs, *target)
    inner = resp.stream

    def tap(chunk: bytes) -> bytes | list[bytes]:
        count(parser.feed(chunk))
        out = inner(chunk)
        return list(out) if not isinstance(out, bytes) else out

    resp.stream = tap


def meter_body(usage: UsageMeter, metrics: Metrics | None, flow: http.HTTPFlow, fs: FlowState) -> None:
    """`response` of a budgeted service with a buffered, uncompressed body: count its usage."""
    target = _budgeted(fs)
    resp = flow.response
    if target is None or resp is None or resp.stream or not resp.raw_content:
        return
    if resp.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return
    parser = UsageParser("text/event-stream" in resp.headers.get("content-type", ""))
    count = _counter(usage, metrics, fs, *target)
    count(parser.feed(resp.raw_content))
    count(parser.feed(b""))


def _counter(
    usage: UsageMeter, metrics: Metrics | None, fs: FlowState, vault: str, service: str, budget: str
) -> Callable[[int], None]:
    assert fs.ident is not None
    agent = fs.ident.principal.name
    b = parse_budget(budget)

    def count(n: int) -> None:
        if n > 0:
            usage.add(vault, service, agent, b, n)
            if metrics is not None:
                metrics.child(metrics.llm_tokens, vault, service, agent).inc(n)

    return count
