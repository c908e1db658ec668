"""The proxy's per-request metrics (`LoopCounter`, `LoopHistogram`: no lock, no argument checks) expose
exactly what prometheus-client's own Counter and Histogram expose for the same updates."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agent_vault.metrics import Metrics

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
VALUES = st.one_of(st.sampled_from([0.0, *BOUNDS, 2.0]), st.floats(min_value=0, max_value=5, allow_nan=False))
LABELS = st.tuples(st.sampled_from(["default", "ops"]), st.sampled_from(["injected", "denied", "error"]))


def _lines(text: bytes, name: str) -> list[str]:
    """The metric's lines, created timestamps cut to their series (their values are clock readings)."""
    out = []
    for line in text.decode().splitlines():
        if name in line:
            out.append(line.rsplit(" ", 1)[0] if "_created" in line else line)
    return sorted(out)


@settings(max_examples=60, deadline=None)
@given(updates=st.lists(st.tuples(LABELS, VALUES), max_size=40))
def test_loop_metrics_expose_what_prometheus_client_exposes(
    updates: list[tuple[tuple[str, str], float]],
) -> None:
    ours = Metrics()
    ref = CollectorRegistry()
    counter = Counter(
        "agent_vault_proxy_requests", "Proxied requests", ["vault", "decision", "status_class"], registry=ref
    )
    hist = Histogram(
        "agent_vault_proxy_added_latency_seconds",
        "Time spent in the proxy before forwarding",
        ["decision"],
        buckets=BOUNDS,
        registry=ref,
    )
    for (vault, decision), value in updates:
        counter.labels(vault, decision, "2xx").inc()
        ours.requests.inc((vault, decision, "2xx"))
        hist.labels(decision).observe(value)
        ours.added_latency.observe((decision,), value)
    want, got = generate_latest(ref), generate_latest(ours.registry)
    for name in ("agent_vault_proxy_requests", "agent_vault_proxy_added_latency_seconds"):
        assert _lines(got, name) == _lines(want, name)
