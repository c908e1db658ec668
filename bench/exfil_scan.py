#!/usr/bin/env python3
"""Micro-benchmark: the exfiltration scan's cost per request (issue #20).

    .venv/bin/python bench/exfil_scan.py [--repeat 300]

For vaults of 1, 10 and 50 credentials (random 40-character values, all their encoded forms and
placeholders as needles), it times `Matcher.scan` over a typical request head (host, path, ~10
headers) and over a 1 KiB and a 64 KiB JSON body that carry no value (the common case: every needle
is searched), plus the per-snapshot build. Prints microseconds per request (median of `--repeat`).
The scan runs on every intercepted request (head) and on every request body; tunnels are not scanned.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import string
import time
from collections.abc import Callable

from agent_vault.proxy.exfil import build_matcher, head_blob


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def _body(size: int) -> bytes:
    alphabet = string.ascii_letters + string.digits + " "
    items = []
    n = 0
    while n < size:
        item = {"id": secrets.token_hex(8), "text": "".join(secrets.choice(alphabet) for _ in range(60))}
        items.append(item)
        n += len(json.dumps(item)) + 2
    return json.dumps({"messages": items}).encode()[:size]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    head = head_blob(
        "api.example.com",
        b"/v1/chat/completions?stream=true&user=agent-42",
        [
            (b"Host", b"api.example.com"),
            (b"User-Agent", b"python-httpx/0.28.1"),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", b"gzip, deflate, br"),
            (b"Content-Type", b"application/json"),
            (b"Authorization", b"Bearer placeholder-not-a-secret"),
            (b"X-Request-Id", secrets.token_hex(16).encode()),
            (b"Content-Length", b"1024"),
            (b"Connection", b"keep-alive"),
            (b"Traceparent", b"00-" + secrets.token_hex(16).encode() + b"-" + secrets.token_hex(8).encode()),
        ],
    )
    bodies = {"1 KiB": _body(1024), "64 KiB": _body(64 * 1024)}
    print(f"{'keys':>5} {'needles':>8} {'build us':>9} {'head us':>8} {'1 KiB us':>9} {'64 KiB us':>10}")
    for n in (1, 10, 50):
        values = {f"KEY_{i}": secrets.token_urlsafe(30) for i in range(n)}
        build = _median_us(lambda v=values: build_matcher(v, v), max(5, args.repeat // 20))
        m = build_matcher(values, values)
        none: frozenset[str] = frozenset()
        head_us = _median_us(lambda m=m: m.scan(head, none), args.repeat)
        body_us = {k: _median_us(lambda m=m, b=b: m.scan(b, none), args.repeat) for k, b in bodies.items()}
        print(
            f"{n:>5} {len(m.needles):>8} {build:>9.0f} {head_us:>8.1f} "
            f"{body_us['1 KiB']:>9.1f} {body_us['64 KiB']:>10.1f}"
        )


if __name__ == "__main__":
    main()
