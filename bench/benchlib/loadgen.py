"""Driving bench/bin/loadgen and condensing its JSON."""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass
from typing import Any

from .common import LOADGEN_BIN, affinity, proxy_core_name


@dataclass
class Column:
    key: str
    label: str
    url_host: str
    proxy: str  # "" = direct
    proc: subprocess.Popen[Any] | None
    scenarios: list[str]
    cas: list[str]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


def loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [str(LOADGEN_BIN), *args]
    try:
        cp = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=affinity("other")
        )
    except subprocess.TimeoutExpired:
        return {"error": f"loadgen timed out after {timeout}s"}
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip()]
    if not lines:
        return {"error": f"loadgen exited {cp.returncode} with no output: {cp.stderr.strip()[-300:]}"}
    try:
        out = json.loads(lines[-1])
    except ValueError:
        return {"error": f"loadgen printed non-JSON: {lines[-1][:200]!r}"}
    return out if isinstance(out, dict) else {"error": f"loadgen printed {out!r}"}


def common_args(col: Column, port: int, path: str) -> list[str]:
    a = ["-url", f"https://{col.url_host}:{port}{path}", "-ca", ",".join(col.cas)]
    if col.proxy:
        a += ["-proxy", col.proxy]
    if col.pid:
        a += ["-pid", str(col.pid)]
    return a


def check(col: Column, port: int, path: str) -> dict[str, Any]:
    return loadgen(["-mode", "check", *common_args(col, port, path)], timeout=30)


# --------------------------------------------------------------------------- stats


def med(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def summarize(runs: list[dict[str, Any]], clk_tck: int) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "not run", "rounds": runs}
    cpu = []
    for r in ok:
        if "proxy_cpu_ticks" in r and r.get("requests"):
            cpu.append(r["proxy_cpu_ticks"] * 1e6 / clk_tck / r["requests"])
    busy: dict[str, float | None] = {}
    for core in ("cpu0", "cpu1"):
        busy[core] = med([r.get("core_busy", {}).get(core) for r in ok])
    # Load on the proxy core that is not the proxy: other processes on a shared machine. It steals
    # time from the proxy, so req/s is also given as on a dedicated core: rps / (1 - foreign), capped
    # by 1e6 / (CPU µs per request), the most a core can do at this per-request cost.
    foreign, dedicated = [], []
    pc = proxy_core_name()
    for r in ok:
        bt = r.get("core_ticks", {}).get(pc)
        ticks = r.get("proxy_cpu_ticks")
        if not (bt and bt[1] > 0 and ticks is not None):
            continue
        f = max(0.0, (bt[0] - ticks) / bt[1])
        foreign.append(f)
        if ticks > 0 and r.get("requests"):
            cap = r["requests"] / (ticks / clk_tck)
            dedicated.append(min(r["rps"] / (1 - f), cap) if f < 0.9 else cap)
    return {
        "rps": med([r["rps"] for r in ok]),
        "rps_dedicated": med(dedicated) if dedicated else None,
        "p50_ms": med([r["lat_ms"].get("p50") for r in ok]),
        "p99_ms": med([r["lat_ms"].get("p99") for r in ok]),
        "errors": sum(r.get("errors", 0) for r in ok),
        "error_samples": [m for r in ok for m in r.get("error_samples") or []][:3],
        "requests": sum(r.get("requests", 0) for r in ok),
        "cpu_us_per_req": med(cpu) if cpu else None,
        "core_busy": busy,
        "foreign_load_proxy_core": {"median": med(foreign), "max": max(foreign) if foreign else None},
        "rss_peak_kb": max((r.get("rss_kb_peak") or 0) for r in ok) or None,
        "rounds": runs,
    }
