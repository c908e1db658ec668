"""The product's per-request logic alone: the addon's hooks on one injected request, in process.

    python bench/hooks.py              # µs per request: requestheaders, request, responseheaders, response
    python bench/hooks.py --cprofile   # the same loop under cProfile, top functions by own time

No sockets, no TLS, no engine layers: a parsed GET on a connection bound by CONNECT (as on the fast
path), a bearer credential injected, and a JSON answer that echoes it (so redaction does real work),
then the audit record (handed to a stub writer that queues it as the real one does). CPU-bound and
single-threaded, so rounds differ by a few per cent where the socket benchmarks differ by 10-20 %:
the tool for A/B work on the hooks (`git stash` / re-run). Reports the best and the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from agent_vault.audit.clean import clean_record
from agent_vault.config import Settings
from agent_vault.core import Services
from agent_vault.domain.principal import Principal
from agent_vault.matching import ServiceIndex
from agent_vault.metrics import Metrics
from agent_vault.proxy.addon import VaultAddon
from agent_vault.proxy.auth import token_digest
from agent_vault.proxy.fast.headers import IndexedHeaders
from agent_vault.runtime import Runtime
from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import Snapshot, VaultView

HOST = "api.bench.test"
SECRET = "bench-secret-value-0123456789abcdef"
AGENT = "av_agt_" + "b" * 43


def _cprofile() -> Any:
    """cProfile, which imports the stdlib `profile`: bench/profile.py shadows it for scripts run here."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import cProfile

    return cProfile


class _Audit:
    """The writer's caller side per record: a copy under a lock (cleaning, hashing and SQLite happen
    on the writer's thread, not measured here)."""

    def __init__(self) -> None:
        self.last: dict[str, Any] = {}
        self._lock = threading.Lock()

    def submit(self, record: dict[str, Any]) -> bool:
        with self._lock:
            self.last = dict(record)
        return True


def _addon(home: Path) -> tuple[VaultAddon, _Audit]:
    svc = ServiceDef.model_validate(
        {"name": "bench", "host": HOST, "port": 443, "auth": {"type": "bearer", "token": "API_TOKEN"}}
    )
    view = VaultView(1, "default", "deny", "enforce", ServiceIndex([svc]), (svc,), {"API_TOKEN": SECRET})
    who = Principal("agent", 1, "bench-bot", agent_id=1, grants={"default": "proxy"})
    runtime = Runtime(None, b"")  # type: ignore[arg-type]  # the store is only used by reload()
    runtime.snapshot = Snapshot({token_digest(AGENT): who}, {"default": view})
    audit = _Audit()
    core = SimpleNamespace(
        settings=Settings(home=home, allow_net=("127.0.0.0/8",), rate_limits="off"),
        services=Services(resolve={HOST: "127.0.0.1"}),
        runtime=runtime,
        audit=audit,
        public_url="http://127.0.0.1:14321",
        api_url="http://127.0.0.1:14321",
    )
    return VaultAddon(core, Metrics()), audit  # type: ignore[arg-type]


def _flows(n: int, base: http.HTTPFlow) -> list[tuple[http.HTTPFlow, http.Response]]:
    """`n` requests on `base`'s client connection, as an agent's SDK sends them (headers indexed, as
    the fast path parses them), each with its answer."""
    flows = []
    for i in range(n):
        f = tflow.tflow()
        f.client_conn, f.server_conn = base.client_conn, base.server_conn
        f.request.scheme, f.request.host, f.request.port = "https", HOST, 443
        f.request.path = f"/v1/items/{i}?limit=10"
        f.request.headers.clear()
        for k, v in (
            ("Host", HOST),
            ("User-Agent", "bench-sdk/1.0"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip, deflate"),
            ("Authorization", "Bearer placeholder"),
            ("X-Request-Id", f"req-{i}"),
        ):
            f.request.headers.add(k, v)
        f.request.data.headers = IndexedHeaders.adopt(f.request.data.headers)
        f.response = None
        flows.append((f, _answer()))
    return flows


def _answer() -> http.Response:
    """The upstream's answer, as the fast path parses it (indexed headers); echoes the credential."""
    body = b'{"ok": true, "echo": "Bearer ' + SECRET.encode() + b'", "items": [1, 2, 3]}'
    resp = http.Response.make(200, body, {"Content-Type": "application/json"})
    resp.data.headers = IndexedHeaders.adopt(resp.data.headers)
    return resp


async def _loop(addon: VaultAddon, flows: list[tuple[http.HTTPFlow, http.Response]]) -> float:
    t0 = time.perf_counter()
    for f, answer in flows:
        await addon.requestheaders(f)
        addon.request(f)
        f.response = answer
        addon.responseheaders(f)
        addon.response(f)
    return time.perf_counter() - t0


async def _bind(addon: VaultAddon, f: http.HTTPFlow) -> None:
    """CONNECT api.bench.test:443 with the agent's token: the connection is bound (the fast path's case)."""
    connect = tflow.tflow()
    connect.client_conn = f.client_conn
    connect.request.method, connect.request.host, connect.request.port = "CONNECT", HOST, 443
    connect.request.headers["Proxy-Authorization"] = (
        "Basic " + base64.b64encode(f"{AGENT}:default".encode()).decode()
    )
    addon.client_connected(f.client_conn)
    await addon.http_connect(connect)
    assert connect.response is None, "CONNECT refused"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="requests per round (default 2000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    ap.add_argument("--cprofile", action="store_true", help="one round under cProfile, top 30 by own time")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):  # one core: no migrations between rounds
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as home, taddons.context() as tctx:
        addon, audit = _addon(Path(home))
        tctx.master.addons.add(addon)

        async def run() -> list[float]:
            base = tflow.tflow()
            warm = _flows(200, base)
            await _bind(addon, base)
            await _loop(addon, warm)
            check = warm[-1][0].response
            last = clean_record(audit.last)[0]
            assert last["decision"] == "injected" and last["redacted_keys"] == ["API_TOKEN"]
            assert check is not None and SECRET.encode() not in (check.content or b""), "not redacted"
            if a.cprofile:
                flows, prof = _flows(a.n, base), _cprofile().Profile()
                gc.collect()
                gc.disable()  # as in the timed rounds: a collection would be charged to a random function
                prof.enable()
                try:
                    await _loop(addon, flows)
                finally:
                    prof.disable()
                    gc.enable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(30)
                return []
            times = []
            for _ in range(a.rounds):
                flows = _flows(a.n, base)  # built outside the timed loop
                gc.collect()
                gc.disable()  # a collection of the flows built above would land in a random round
                try:
                    times.append(await _loop(addon, flows) / a.n)
                finally:
                    gc.enable()
            return times

        times = asyncio.run(run())
    if times:
        us = sorted(t * 1e6 for t in times)
        med = statistics.median(us)
        print(f"hooks: best {us[0]:.1f} us/request, median {med:.1f} ({a.rounds} rounds of {a.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
