"""Prometheus metrics (SPEC §13). Labels never carry hosts, paths, tokens or key names."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class LoopCounter:
    """A labelled counter the proxy updates on every request: one dict update, without the argument
    checks and the lock prometheus-client takes per call. Danger: `inc` from the proxy's loop thread
    only (two writers could lose counts); a scrape, on any thread, copies the dict under the GIL."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.values: dict[Labels, float] = {}
        self.created: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        value = self.values.get(labels)
        if value is None:
            self.created[labels] = time.time()
            value = 0.0
        self.values[labels] = value + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value, created=self.created.get(labels))
        return family


class LoopHistogram:
    """A labelled histogram on the same terms as `LoopCounter` (loop thread only for `observe`)."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.bounds = (*sorted(float(b) for b in buckets if b != math.inf), math.inf)
        self.les = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.series: dict[Labels, list[float]] = {}  # labels -> [count per bucket..., sum]
        self.created: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            self.created[labels] = time.time()
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound >= value
        counts[-1] += value

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, counts in list(self.series.items()):
            counts = list(counts)
            cumulative, running = [], 0.0
            for le, n in zip(self.les, counts, strict=False):
                running += n
                cumulative.append((le, running))
            family.add_metric(labels, cumulative, counts[-1])
            created = self.created.get(labels)
            if created is not None:
                family.samples.append(
                    Sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)), created)
                )
        return family


class _LoopCollector:
    """Exports the loop's counters and histograms to a registry, at scrape time."""

    def __init__(self, metrics: Sequence[LoopCounter | LoopHistogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for m in self.metrics:
            yield m.collect()


class Metrics:
    """One registry per server process (tests may build several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        GCCollector(registry=r)  # python_gc_*: collections per generation (gcpolicy's effect)
        ProcessCollector(registry=r)  # process_*: RSS, CPU seconds, open descriptors (Linux)
        # updated on every proxied request, by the proxy's loop thread only
        self.requests = LoopCounter(
            "agent_vault_proxy_requests", "Proxied requests", ["vault", "decision", "status_class"]
        )
        self.requests_by_path = LoopCounter(
            "agent_vault_proxy_path_requests",
            "Proxied requests by the path that served them (engine | fast)",
            ["path"],
        )
        self.added_latency = LoopHistogram(
            "agent_vault_proxy_added_latency_seconds",
            "Time spent in the proxy before forwarding",
            ["decision"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.duration = LoopHistogram(
            "agent_vault_proxy_request_duration_seconds",
            "Request duration",
            ["decision"],
            buckets=Histogram.DEFAULT_BUCKETS,
        )
        self.injections = LoopCounter("agent_vault_injections", "Injected requests", ["vault", "auth_type"])
        self.redactions = LoopCounter("agent_vault_redactions", "Responses with a redaction", ["vault"])
        r.register(
            _LoopCollector(
                [
                    self.requests,
                    self.requests_by_path,
                    self.added_latency,
                    self.duration,
                    self.injections,
                    self.redactions,
                ]
            )
        )
        self.denials = Counter("agent_vault_denials", "Denied requests", ["vault", "code"], registry=r)
        self.rate_limited = Counter(
            "agent_vault_rate_limited", "Rate-limited requests", ["limiter"], registry=r
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

    def client_tls_failed(self) -> None:
        """Count one failed client TLS handshake (SPEC §13: `decision="error"`, `code="client_tls"`).
        Before any request, so no vault: label ""; loop thread only (the requests counter)."""
        self.requests.inc(("", "error", "err"))
        self.child(self.denials, "", "client_tls").inc()

    def sync_audit_dropped(self, total: int) -> None:
        """Advance the `agent_vault_audit_dropped_total` counter to the writer's running total."""
        with self._dropped_lock:
            if total > self._dropped_seen:
                self.audit_dropped.inc(total - self._dropped_seen)
                self._dropped_seen = total


def status_class(status: int | None) -> str:
    return "err" if not status else f"{status // 100}xx"
