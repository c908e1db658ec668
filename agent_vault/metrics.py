"""Prometheus metrics (SPEC §13). Labels never carry hosts, paths, tokens or key names."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, ProcessCollector


class Metrics:
    """One registry per server process (tests may build several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        GCCollector(registry=r)  # python_gc_*: collections per generation (gcpolicy's effect)
        ProcessCollector(registry=r)  # process_*: RSS, CPU seconds, open descriptors (Linux)
        self.requests = Counter(
            "agent_vault_proxy_requests",
            "Proxied requests",
            ["vault", "decision", "status_class"],
            registry=r,
        )
        self.requests_by_path = Counter(
            "agent_vault_proxy_path_requests",
            "Proxied requests by the path that served them (engine | fast)",
            ["path"],
            registry=r,
        )
        self.added_latency = Histogram(
            "agent_vault_proxy_added_latency_seconds",
            "Time spent in the proxy before forwarding",
            ["decision"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.duration = Histogram(
            "agent_vault_proxy_request_duration_seconds", "Request duration", ["decision"], registry=r
        )
        self.injections = Counter(
            "agent_vault_injections", "Injected requests", ["vault", "auth_type"], registry=r
        )
        self.denials = Counter("agent_vault_denials", "Denied requests", ["vault", "code"], registry=r)
        self.rate_limited = Counter(
            "agent_vault_rate_limited", "Rate-limited requests", ["limiter"], registry=r
        )
        self.redactions = Counter(
            "agent_vault_redactions", "Responses with a redaction", ["vault"], registry=r
        )
        self.exfiltration_blocked = Counter(
            "agent_vault_exfiltration_blocked",
            "Requests refused for carrying a credential to a host not using it",
            ["vault", "kind"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "agent_vault_llm_tokens",
            "LLM tokens reported by upstream responses of services with a token budget",
            ["vault", "service", "agent"],
            registry=r,
        )
        self.active_tunnels = Gauge("agent_vault_active_tunnels", "Open raw tunnels", registry=r)
        self.active_connections = Gauge(
            "agent_vault_active_connections", "Open client connections", registry=r
        )
        self.audit_depth = Gauge("agent_vault_audit_queue_depth", "Audit records waiting", registry=r)
        self.audit_dropped = Counter("agent_vault_audit_dropped", "Audit records dropped", registry=r)
        self._dropped_seen = 0
        self._dropped_lock = threading.Lock()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.proposals_pending = Gauge(
            "agent_vault_proposals_pending", "Pending proposals", ["vault"], registry=r
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: the proxy asks for a few label sets per request and
        prometheus-client validates and locks on every call. Label sets are bounded (vault x
        decision x status class), never hosts or paths."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def sync_audit_dropped(self, total: int) -> None:
        """Advance the `agent_vault_audit_dropped_total` counter to the writer's running total."""
        with self._dropped_lock:
            if total > self._dropped_seen:
                self.audit_dropped.inc(total - self._dropped_seen)
                self._dropped_seen = total


def status_class(status: int | None) -> str:
    return "err" if not status else f"{status // 100}xx"
