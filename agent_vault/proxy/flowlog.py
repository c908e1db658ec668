"""Per-request state of the proxy and its audit record + metrics (SPEC §12, §13).

`FlowState` holds the secrets injected into one request (for redaction): never log or repr them;
the addon drops the state when the flow ends. `FlowLog` writes exactly one audit record per
proxied request, per refused CONNECT and per tunnel; records carry names, never values. Requests and
CONNECTs refused before the proxy knows who sent them (no valid token: 407, the failed-auth limiter's
429, ...) are counted into one `proxy.refused` summary per cause and window instead
(`AuditWriter.tally`), so an unauthenticated client cannot grow the log one row per attempt. Strings
from the wire (paths, methods, hosts) may hold any bytes: the writer escapes them (`clean_record`).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from mitmproxy import http
from mitmproxy.connection import Connection

from agent_vault.audit import AuditWriter, proxy_record
from agent_vault.errors import AgentVaultError, BadRequest, HeadersTooLarge, ProxyInternal, RateLimited
from agent_vault.metrics import Metrics, status_class
from agent_vault.proxy import engine, inject
from agent_vault.proxy.answers import is_proxy_answer, upstream_error
from agent_vault.proxy.decide import Decision, Identity
from agent_vault.proxy.live import ByteCounter
from agent_vault.proxy.redact import contains_secret, value_forms
from agent_vault.servicedef import ServiceDef

log = logging.getLogger("agent_vault.proxy")


def incident(e: BaseException) -> AgentVaultError:
    """Log an unexpected error by type and place only (its message may hold a value): the 502."""
    ident = uuid.uuid4().hex[:12]
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else "?"
    log.error("proxy incident %s: %s at %s", ident, type(e).__name__, where)
    return ProxyInternal("internal proxy error; the request was not forwarded", incident=ident)


@dataclass(slots=True)
class FlowState:
    """One request: who, where (the normalised target), the decision, and what happened."""

    started: float
    host: str
    port: int
    path: str  # as the agent sent it (before substitution)
    ident: Identity | None = None
    decision: Decision | None = None
    error: str | None = None  # SPEC §6 code when the proxy answered itself
    substituted: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # dynamic key -> source kind (names only)
    values: Mapping[str, str] | None = field(default=None, repr=False)  # view values + dynamic ones
    secrets: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    redacted: set[str] = field(default_factory=set)
    redaction_skipped: bool = False
    blocked_key: str | None = None  # exfiltration_blocked: the key NAME found (guard)
    bytes_up: int = 0
    bytes_down: int = 0
    signing: Any = field(default=None, repr=False)  # brokered.PendingSign: an AWS request to sign
    served: str = "engine"  # engine | fast: which path served the request (issue 24)
    injected: bool = False  # the credential was put into the request: its keys are audited whatever follows

    def add_secrets(self, svc: ServiceDef, inj: inject.Injection | None, values: dict[str, str]) -> None:
        """Remember values sent in this request for redaction (SPEC §5.9), if the service redacts."""
        if not svc.effective_redact:
            return
        items = list(inj.secrets) if inj is not None else []
        for key, value in values.items():
            if len(value) >= inject.MIN_REDACT_LEN:
                items += [(key, form) for form in value_forms(value)]
                items.append((key, quote(value, safe="").encode()))
        for item in items:
            if item not in self.secrets:
                self.secrets.append(item)

    def redact_buffered(self, resp: http.Response, limit: int) -> None:
        """Redact a fully buffered response body, decoding gzip/deflate/br/zstd first.

        Decoding is incremental and bounded: a body that decodes to more than `limit` bytes
        (`--max-buffered-bytes`) raises `ResponseTooLarge` (the addon answers it instead of the
        response) without ever holding more than `limit` decoded bytes. Nothing is decoded when
        there is nothing to redact (no secrets, or the service opted out of redaction)."""
        from agent_vault.errors import ResponseTooLarge  # local: this method's own dependencies
        from agent_vault.proxy import decoding

        encoding = resp.headers.get("content-encoding", "").strip().lower()
        raw = resp.raw_content
        identity = encoding in ("", "identity")
        if self.secrets and raw and identity and not contains_secret(raw, self.secrets):
            self.bytes_down = len(raw)  # the common case: nothing to decode, nothing to redact
            return
        if self.secrets and raw:
            body = raw
            if not identity:
                try:
                    body = decoding.decode(encoding, raw, limit)
                except (ValueError, decoding.CorruptEncoding):  # unknown coding or malformed data
                    self.redaction_skipped = True  # SPEC §5.9: forwarded as received, unscanned
                    self.bytes_down = len(raw)
                    return
                except decoding.DecodedTooLarge:
                    raise ResponseTooLarge(
                        f"the response body decodes to more than {limit} bytes", limit_bytes=limit
                    ) from None
                resp.headers.pop("content-encoding", None)
            body, keys = inject.redact_bytes(body, self.secrets)
            self.redacted |= keys
            if body is not raw:
                resp.raw_content = body
            resp.headers["content-length"] = str(len(body))
        self.bytes_down = len(resp.raw_content or b"")


class FlowLog:
    """Audit records and metrics for the proxy; never blocks (the audit writer is a queue)."""

    def __init__(self, audit: AuditWriter, metrics: Metrics) -> None:
        self.audit = audit
        self.metrics = metrics
        engine.on_head_refused = self.head_refused  # one proxy per process (one Master)

    def head_refused(self, client: Connection, status: int) -> None:
        """The engine refused a request head it could not parse (400) or that was too large (431):
        no flow, no hook, nothing forwarded, nobody identified. Counted like any anonymous refusal.
        Runs inside the engine's parser: never raises."""
        try:
            err = HeadersTooLarge("head too large") if status == 431 else BadRequest("unparsable head")
            self._count_denial(None, err)
            peer = client.peername
            self.audit.tally(
                decision="denied",
                status=err.status,
                error=err.code,
                method="-",
                host=None,
                client=str(peer[0]) if peer else None,
            )
        except Exception as e:  # the audit must not break the engine; the incident is logged
            incident(e)

    def denied(self, fs: FlowState, err: AgentVaultError) -> None:
        self._count_denial(fs.ident.vault if fs.ident else None, err)

    def refused_connect(self, flow: http.HTTPFlow, ident: Identity | None, err: AgentVaultError) -> None:
        self._count_denial(ident.vault if ident else None, err)
        decision = "error" if err.status >= 500 else "denied"
        if ident is None:
            self._tally(flow, decision, err.status, err.code, "CONNECT", flow.request.host)
            return
        self._submit(
            proxy_record(
                actor=ident.principal.actor,
                vault=ident.vault,
                method="CONNECT",
                scheme="tcp",
                host=flow.request.host,
                port=flow.request.port,
                decision=decision,
                status=err.status,
                error=err.code,
                http_version=flow.request.http_version,
            )
        )

    def tunnel(self, ident: Identity, target: tuple[str, int], seconds: float, relayed: ByteCounter) -> None:
        self._submit(
            proxy_record(
                kind="proxy.tunnel",
                actor=ident.principal.actor,
                vault=ident.vault,
                method="CONNECT",
                scheme="tcp",
                host=target[0],
                port=target[1],
                decision="tunnel",
                status=200,
                bytes_up=relayed.up,
                bytes_down=relayed.down,
                duration_ms=round(seconds * 1000, 1),
            )
        )

    def finished(self, flow: http.HTTPFlow, fs: FlowState) -> None:
        """The one audit record of a request, when its response was sent or it failed."""
        req, resp, d = flow.request, flow.response, fs.decision
        status = resp.status_code if resp is not None else None
        error = fs.error
        if error is None and flow.error is not None and (resp is None or is_proxy_answer(resp)):
            error = (
                "client_disconnected"
                if "client" in flow.error.msg.lower()
                else upstream_error(flow.error.msg).code
            )
        if d is not None and error is None:
            decision = d.kind
        else:
            # `denied`: the proxy refused (its own 4xx); `error`: it failed, or the exchange failed
            # after the upstream answered (e.g. a streamed body cut at the decoding cap)
            refused = status is not None and status < 500 and is_proxy_answer(resp)
            decision = "denied" if refused else "error"
        svc = d.service if d is not None else None
        ident = fs.ident
        vault = ident.vault if ident is not None else None
        elapsed = time.perf_counter() - fs.started
        if ident is None and fs.error is not None:  # refused before authentication: never forwarded
            self._tally(flow, decision, status, error, req.method, fs.host)
        else:
            self._submit_finished(flow, fs, decision, status, error, elapsed)
        m = self.metrics
        m.requests.inc((vault or "", decision, status_class(status)))
        m.requests_by_path.inc((fs.served,))
        m.duration.observe((decision,), elapsed)
        if decision == "injected" and svc is not None:
            m.injections.inc((vault or "", svc.auth.type))
        if fs.redacted:
            m.redactions.inc((vault or "",))

    def _submit_finished(
        self,
        flow: http.HTTPFlow,
        fs: FlowState,
        decision: str,
        status: int | None,
        error: str | None,
        elapsed: float,
    ) -> None:
        req, d, ident = flow.request, fs.decision, fs.ident
        svc = d.service if d is not None else None
        inj = d.injection if d is not None else None
        self._submit(
            proxy_record(
                actor=ident.principal.actor if ident is not None else "anonymous",
                vault=ident.vault if ident is not None else None,
                method=req.method,
                scheme=req.scheme,
                host=fs.host,
                port=fs.port,
                path=fs.path,
                service=svc.name if svc is not None else None,
                auth_type=svc.auth.type if svc is not None else None,
                injected_keys=list(inj.used_keys)
                if inj is not None and (fs.injected or decision == "injected")
                else [],
                substituted_keys=fs.substituted,
                redacted_keys=sorted(fs.redacted),
                credential_sources=fs.sources,
                decision=decision,
                status=status,
                error=error,
                bytes_up=fs.bytes_up,
                bytes_down=fs.bytes_down,
                duration_ms=round(elapsed * 1000, 2),
                http_version=req.http_version,
                would_deny_code=d.would_deny_code if d is not None and d.kind == "would_deny" else None,
                redaction="skipped" if fs.redaction_skipped else None,
                blocked_key=fs.blocked_key,
                served_by=fs.served if fs.served != "engine" else None,
            )
        )

    def _tally(
        self,
        flow: http.HTTPFlow,
        decision: str,
        status: int | None,
        error: str | None,
        method: str,
        host: str,
    ) -> None:
        """Count a refusal of an unidentified client into its cause's summary (AuditWriter.tally)."""
        peer = flow.client_conn.peername
        self.audit.tally(
            decision=decision,
            status=status,
            error=error,
            method=method,
            host=host,
            client=str(peer[0]) if peer else None,
        )

    def _submit(self, record: dict[str, Any]) -> None:
        """Queue `record` for the audit log; with `--log-level debug`, also one log line of its fields
        (SPEC §13). JSON with every non-ASCII and control character escaped: one line, whatever the
        wire sent. Audit records never hold a value, so neither does the line."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", record.get("kind", "proxy.request"), json.dumps(record, default=str))
        self.audit.submit(record)

    def _count_denial(self, vault: str | None, err: AgentVaultError) -> None:
        if isinstance(err, RateLimited):
            self.metrics.rate_limited.labels(err.extra.get("limiter", "unknown")).inc()
        self.metrics.denials.labels(vault or "", err.code).inc()
