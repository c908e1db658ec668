"""Where the microseconds go: a cProfile dump of the server's main thread, grouped by component.

`groups(prof, requests)` sums each function's own time (tottime) into a component by its file (or, for C
functions, by the method's owner), drops what is not request work (waiting in epoll, start-up imports),
and returns rows of (component, µs per request under cProfile, share). cProfile slows Python code several
times more than C code, so read the shares, and scale them by the unprofiled µs/request of the bench.
"""

from __future__ import annotations

import pstats
from pathlib import Path

# (component, substrings of "file:function"); the first match wins, order matters.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("idle: epoll, lock waits (not request work)", ("epoll", "selectors.py:select", "'acquire' of '_thread")),
    (
        "start-up: imports, init (not request work)",
        ("importlib", "builtins.exec", "builtins.compile", "__build_class__", "_io.BufferedReader", "_imp.")
        + ("open_code", "posix.stat", "posix.listdir", "enum.py", "typing.py", "load_pem"),
    ),
    ("agent-vault fast path (proxy/fast)", ("agent_vault/proxy/fast/",)),
    ("agent-vault audit", ("agent_vault/audit/",)),
    ("agent-vault metrics + prometheus_client", ("agent_vault/metrics", "prometheus_client")),
    ("agent-vault guard / redaction", ("agent_vault/guard", "redact")),
    ("database (SQLAlchemy, sqlite3)", ("sqlalchemy", "sqlite3", "sqlmodel")),
    ("agent-vault decide / inject / other", ("agent_vault/",)),
    ("llhttp parser (httptools, C)", ("httptools",)),
    ("TLS (ssl, pyOpenSSL, cryptography)", ("_ssl.", "ssl.py", "sslproto", "_SSL", "_openssl", "OpenSSL/")),
    ("socket syscalls (send/recv)", ("'send'", "'recv", "'socket.", "sock_")),
    ("mitmproxy engine (layers, HTTP model)", ("mitmproxy/",)),
    ("asyncio event loop, tasks, transports", ("asyncio/",)),
    ("other Python (stdlib, builtins)", ("",)),
]


def component(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    for name, needles in RULES:
        if any(n in where for n in needles):
            return name
    return RULES[-1][0]


def groups(prof: Path, requests: int) -> list[tuple[str, float, float]]:
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    tot: dict[str, float] = {}
    for key, (_cc, _nc, tt, _ct, _callers) in stats.items():
        c = component(key)
        tot[c] = tot.get(c, 0.0) + tt
    work = {k: v for k, v in tot.items() if not k.startswith(("idle", "start-up"))}
    total = sum(work.values()) or 1.0
    rows = [(k, v * 1e6 / max(1, requests), v / total) for k, v in work.items()]
    rows.sort(key=lambda r: -r[1])
    skipped = [(k, v * 1e6 / max(1, requests), 0.0) for k, v in tot.items() if k not in work]
    return rows + skipped


def render(rows: list[tuple[str, float, float]], requests: int) -> str:
    out = [f"main thread, own time per component over {requests:,} requests (under cProfile)", ""]
    out.append(f"{'component':48s} {'µs/req':>8s} {'share':>6s}")
    for name, us, share in rows:
        out.append(f"{name:48s} {us:8.1f} {share * 100:5.1f}%" if share else f"{name:48s} {us:8.1f}      —")
    return "\n".join(out)
