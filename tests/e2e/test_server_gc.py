"""The server's collector (`gcpolicy`): off during start-up, on again once the server is ready.

A server that left it off would keep every garbage cycle for good (a closed proxy connection leaves
~85 objects in cycles): memory would only grow. `/metrics` shows the collector at work
(`python_gc_collections_total`) and the process's memory (`process_resident_memory_bytes`)."""

from __future__ import annotations

import socket

from tests.e2e.test_audit import metrics_text
from tests.helpers.load import metric
from tests.helpers.server import ServerProc

CONNECTIONS = 300


def _refused_connect(port: int) -> bytes:
    """One unauthenticated CONNECT on a new connection; returns the proxy's answer head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        return s.recv(4096)


def test_the_collector_runs_after_start_up(server: ServerProc) -> None:
    before = metrics_text(server)
    assert metric(before, "process_resident_memory_bytes") > 0
    gen0 = metric(before, "python_gc_collections_total", generation="0")
    for _ in range(CONNECTIONS):  # each closed connection leaves garbage cycles behind
        assert _refused_connect(server.proxy_port).startswith(b"HTTP/1.1 407")
    after = metrics_text(server)
    assert metric(after, "python_gc_collections_total", generation="0") > gen0
