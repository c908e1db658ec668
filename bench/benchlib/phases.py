"""The phases of one benchmark run, in order: start, check, load the big vault, rounds, idle, streaming."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agentvault import AgentVault, load_big_vault, start_agent_vault
from .common import (
    BENCH_HOST,
    CORES,
    LOADGEN_BIN,
    PROCS,
    SCENARIOS,
    TUNNEL_HOST,
    BenchError,
    affinity,
    log,
    pin_threads,
    proxy_core_name,
    read_line,
    read_status_kb,
)
from .loadgen import Column, check, common_args, loadgen, med, summarize
from .report import fmt
from .upstreams import make_pki, start_mitmdump, start_nginx, start_sse, wait_mitmdump

ALL = list(SCENARIOS)
TUNNEL_SCENARIOS = ["ka1", "ka16", "nc16"]
QUICK_SKIP = {"mitmdump-ignore": {"ka1"}, "av-tunnel": {"ka1"}, "av-10k": {"ka1"}}  # --quick: fewer cells


@dataclass
class Run:
    cfg: dict[str, Any]
    work: Path
    clk_tck: int
    pki: dict[str, Any] = field(default_factory=dict)
    ngx_port: int = 0
    sse_port: int = 0
    blob_sha: str = ""
    ports: dict[str, int | None] = field(default_factory=dict)
    cols: dict[str, Column] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    av: AgentVault = field(default_factory=AgentVault)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)


def start(r: Run, nginx: str, skip_av: bool) -> None:
    r.pki = make_pki(r.work)
    r.ngx_port, r.blob_sha = start_nginx(nginx, r.work, r.pki)
    r.sse_port = start_sse(r.pki)
    log(
        f"upstreams: nginx https://{BENCH_HOST}:{r.ngx_port} (TLS 1.3), SSE https://{BENCH_HOST}:{r.sse_port}/sse"
    )
    # Both start at once (their imports take seconds on a busy machine), then both are awaited.
    mitm, mitm_port, mitm_ca = start_mitmdump(r.work, r.pki, "mitmdump", [])
    mign, mign_port, mign_ca = start_mitmdump(
        r.work, r.pki, "mitmdump-ignore", ["--ignore-hosts", r"^tunnel\.local:"]
    )
    wait_mitmdump("mitmdump", mitm, mitm_port, mitm_ca)
    wait_mitmdump("mitmdump-ignore", mign, mign_port, mign_ca)
    log(f"mitmdump on :{mitm_port}; mitmdump --ignore-hosts tunnel.local on :{mign_port}")
    av = r.av
    if skip_av:
        av.error = "skipped (--skip-agent-vault)"
    else:
        try:
            start_agent_vault(r.work, r.pki, av)
            log(f"agent-vault ready in {av.ready_s}s: api={av.api} proxy=:{av.proxy_port}")
        except Exception as e:  # noqa: BLE001 - the column fails, the bench carries on
            av.error = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            print(f"agent-vault column failed: {av.error}", flush=True)
    r.ports = {
        "nginx": r.ngx_port,
        "sse": r.sse_port,
        "mitmdump": mitm_port,
        "mitmdump_ignore": mign_port,
        "agent_vault_proxy": av.proxy_port or None,
    }
    up = r.pki["ca"]
    r.cols = {
        "direct": Column("direct", "direct", BENCH_HOST, "", None, ALL, [up]),
        "mitmdump": Column(
            "mitmdump",
            "plain mitmdump",
            BENCH_HOST,
            f"http://127.0.0.1:{mitm_port}",
            mitm,
            ALL,
            [up, mitm_ca],
        ),
        "mitmdump-ignore": Column(
            "mitmdump-ignore",
            "mitmdump --ignore-hosts (tunnel.local)",
            TUNNEL_HOST,
            f"http://127.0.0.1:{mign_port}",
            mign,
            TUNNEL_SCENARIOS,
            [up, mign_ca],
        ),
    }
    if not av.error:
        avp = f"http://{av.token}:default@127.0.0.1:{av.proxy_port}"
        r.cols["agent-vault"] = Column(
            "agent-vault", "agent-vault", BENCH_HOST, avp, av.proc, ALL, [up, av.ca]
        )
        r.cols["av-tunnel"] = Column(
            "av-tunnel",
            "agent-vault tunnel (tunnel.local)",
            TUNNEL_HOST,
            avp,
            av.proc,
            TUNNEL_SCENARIOS,
            [up, av.ca],
        )


def expect(r: Run, name: str, col: Column, path: str, body: str, issuer_is_upstream: bool) -> bool:
    """One request on a fresh connection: status 200, body substring, and who signed the certificate."""
    res = check(col, r.ngx_port, path)
    r.checks[name] = res
    ok = res.get("status") == 200 and body in res.get("body", "")
    issuer = res.get("tls", {}).get("issuer", "")
    ok = ok and ((r.pki["ca_org"] in issuer) == issuer_is_upstream)
    if not ok:
        log(f"CHECK FAILED {name}: {json.dumps(res)[:400]}")
    return ok


def run_checks(r: Run) -> None:
    c = r.cols
    if not (
        expect(r, "direct /", c["direct"], "/", "bench-ok", True)
        and expect(r, "mitmdump / (intercepted)", c["mitmdump"], "/", "bench-ok", False)
        and expect(
            r, "mitmdump-ignore tunnel.local / (not intercepted)", c["mitmdump-ignore"], "/", "bench-ok", True
        )
    ):
        raise BenchError("baseline checks failed (see above)")
    expect(r, "direct /auth (nothing injected)", c["direct"], "/auth", "auth=missing", True)
    if "agent-vault" not in c:
        return
    fails = []
    name = "agent-vault /auth (injected)"
    if not expect(r, name, c["agent-vault"], "/auth", "auth=injected-ok", False):
        fails.append(
            "injection check: GET https://bench.local/auth through agent-vault did not show the injected "
            f"Authorization: {json.dumps(r.checks[name])[:300]}"
        )
    name = "agent-vault tunnel.local / (not intercepted)"
    if not expect(r, name, c["av-tunnel"], "/", "bench-ok", True):
        fails.append(
            "tunnel check: tunnel.local through agent-vault was not a raw tunnel to the upstream: "
            f"{json.dumps(r.checks[name])[:300]}"
        )
    if fails:
        r.av.error = "; ".join(fails)
        print(f"agent-vault column failed: {r.av.error}", flush=True)
        c.pop("agent-vault", None)
        c.pop("av-tunnel", None)


def idle_rss_and_big_vault(r: Run) -> None:
    """Idle RSS after start + checks (before any load), then the big vault and its RSS."""
    time.sleep(0.5 if r.cfg["mode"] == "quick" else 1.0)
    for key, col in r.cols.items():
        if col.pid and key != "av-tunnel":
            r.rss[key] = {"idle_kb": read_status_kb(col.pid, "VmRSS")}
    if "agent-vault" not in r.cols:
        return
    av = r.av
    av.rss_10_services_kb = r.rss["agent-vault"]["idle_kb"]
    try:
        load_big_vault(r.work, av, r.cfg["services_big"])
        time.sleep(0.5)
        av.rss_big_services_kb = read_status_kb(av.proc.pid, "VmRSS") if av.proc else None
        log(f"big vault: {av.services_big} services loaded in {av.services_load_s}s")
        big = Column(
            "av-10k",
            f"agent-vault, vault with {av.services_big} services",
            BENCH_HOST,
            f"http://{av.token_big}:big@127.0.0.1:{av.proxy_port}",
            av.proc,
            ["ka1", "ka16"],
            [r.pki["ca"], av.ca],
        )
        if expect(r, "agent-vault big vault /auth (injected)", big, "/auth", "auth=injected-ok", False):
            r.cols["av-10k"] = big
        else:
            av.error_big = "injection check through the big vault failed"
    except Exception as e:  # noqa: BLE001 - this case fails, the rest carries on
        av.error_big = str(e)
        print(f"agent-vault {r.cfg['services_big']}-services case failed: {e}", flush=True)


def warm_up(r: Run) -> None:
    """Untimed: leaf certificates, lazy imports, upstream connections."""
    d = "0.1s" if r.cfg["mode"] == "quick" else "0.3s"
    for col in r.cols.values():
        args = ["-mode", "load", *common_args(col, r.ngx_port, "/"), "-c", "16", "-d", d, "-warmup", "0.2s"]
        loadgen(args, timeout=30)


def describe(r: Run, key: str, label: str, res: dict[str, Any]) -> str:
    col = r.cols[key]
    extra = ""
    if "proxy_cpu_ticks" in res and res["requests"]:
        extra = f", proxy {res['proxy_cpu_ticks'] * 1e6 / r.clk_tck / res['requests']:.0f} µs/req"
    bt = res.get("core_ticks", {}).get(proxy_core_name())
    if bt and bt[1] and col.pid:
        extra += f", other load on proxy core {max(0, bt[0] - res.get('proxy_cpu_ticks', 0)) / bt[1]:.0%}"
    lat = res["lat_ms"]
    return (
        f"  {key:16s} {label:22s} {res['rps']:>9,.0f} req/s  p50 {lat.get('p50', 0):.2f} ms"
        f"  p99 {lat.get('p99', 0):.2f} ms  err {res['errors']}{extra}"
    )


def rounds(r: Run) -> dict[str, dict[str, Any]]:
    """Every scenario visits every column before the next scenario; the column order rotates per round."""
    if r.cfg["mode"] == "quick":
        for k, skip in QUICK_SKIP.items():
            if k in r.cols:
                r.cols[k].scenarios = [x for x in r.cols[k].scenarios if x not in skip]
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        k: {s: [] for s in c.scenarios} for k, c in r.cols.items()
    }
    d, w = r.cfg["duration_s"], r.cfg["warmup_s"]
    for rnd in range(r.cfg["rounds"]):
        log(f"round {rnd + 1}/{r.cfg['rounds']}")
        for scen, (label, conc, new_conn) in SCENARIOS.items():
            order = [k for k in r.cols if scen in r.cols[k].scenarios]
            order = order[rnd % len(order) :] + order[: rnd % len(order)]
            for key in order:
                col = r.cols[key]
                if not col.alive():
                    rc = col.proc.returncode if col.proc else None
                    raw[key][scen].append({"error": f"proxy process exited ({rc})"})
                    continue
                if col.pid:
                    pin_threads(col.pid, CORES["proxy"])
                args = ["-mode", "load", *common_args(col, r.ngx_port, "/"), "-c", str(conc), "-d", f"{d}s"]
                args += ["-warmup", f"{min(w, 0.25) if new_conn else w}s"] + (
                    ["-new-conn"] if new_conn else []
                )
                res = loadgen(args, timeout=d + w + 40)
                raw[key][scen].append(res)
                log(
                    f"  {key} {label}: ERROR {res['error']}"
                    if "error" in res
                    else describe(r, key, label, res)
                )
    return {k: {s: summarize(v, r.clk_tck) for s, v in sc.items()} for k, sc in raw.items()}


def idle_connections(r: Run) -> dict[str, Any]:
    """N keep-alive connections (CONNECT + TLS + one request) held open; the proxy's RSS meanwhile."""
    out: dict[str, Any] = {}
    for key in ("mitmdump", "agent-vault"):
        if key not in r.cols or not r.cols[key].alive():
            continue
        col = r.cols[key]
        before = read_status_kb(col.pid, "VmRSS") if col.pid else None
        cmd = [str(LOADGEN_BIN), "-mode", "idle", *common_args(col, r.ngx_port, "/")]
        cmd += ["-conns", str(r.cfg["idle_conns"]), "-hold", "300s"]
        p = PROCS.add(
            f"idle-{key}",
            subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                preexec_fn=affinity("other"),
            ),
        )
        entry: dict[str, Any] = {"conns": r.cfg["idle_conns"], "rss_before_kb": before}
        try:
            entry.update(json.loads(read_line(p, 240)))
            time.sleep(1.0)
            entry["rss_holding_kb"] = read_status_kb(col.pid, "VmRSS") if col.pid else None
            if p.stdin:
                p.stdin.close()  # tells loadgen to reuse each connection once more, then exit
            entry["done"] = json.loads(read_line(p, 120))
        except (BenchError, ValueError) as e:
            entry["error"] = str(e)
        finally:
            PROCS.stop(p)
        if entry.get("rss_holding_kb") and before and entry.get("opened"):
            entry["kb_per_conn"] = round((entry["rss_holding_kb"] - before) / entry["opened"], 1)
        out[key] = entry
        log(
            f"idle conns {key}: opened {entry.get('opened')} in {entry.get('open_s')}s, RSS "
            f"{fmt((before or 0) / 1024, 1)} -> {fmt((entry.get('rss_holding_kb') or 0) / 1024, 1)} MiB, "
            f"alive after hold {entry.get('done', {}).get('alive_after_hold')}"
        )
    return out


def streaming(r: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """SSE time to first event and a 10 MiB download, per column, once per round."""
    sse: dict[str, list[dict[str, Any]]] = {}
    dl: dict[str, list[dict[str, Any]]] = {}
    keys = [k for k in ("direct", "mitmdump", "agent-vault") if k in r.cols]
    for _ in range(r.cfg["rounds"]):
        for key in keys:
            col = r.cols[key]
            args = ["-mode", "sse", *common_args(col, r.sse_port, "/sse?n=5&interval_ms=50&delay_ms=50")]
            sse.setdefault(key, []).append(loadgen([*args, "-n", str(r.cfg["sse_samples"])], timeout=120))
            args = ["-mode", "download", *common_args(col, r.ngx_port, "/10m"), "-expect-sha256", r.blob_sha]
            dl.setdefault(key, []).append(loadgen([*args, "-n", str(r.cfg["download_samples"])], timeout=180))

    def errors(v: list[dict[str, Any]]) -> int:
        return sum(x.get("errors", 0) if "error" not in x else 1 for x in v)

    sse_sum = {
        k: {
            "first_event_lag_ms": med([x.get("first_event_lag_ms", {}).get("p50") for x in v]),
            "ttfe_ms": med([x.get("ttfe_ms", {}).get("p50") for x in v]),
            "headers_ms": med([x.get("headers_ms", {}).get("p50") for x in v]),
            "errors": errors(v),
            "rounds": v,
        }
        for k, v in sse.items()
    }
    dl_sum = {}
    for k, v in dl.items():
        growth = [
            x["rss_kb_peak"] - x["rss_kb_start"]
            for x in v
            if "error" not in x and x.get("rss_kb_start", 0) > 0
        ]
        dl_sum[k] = {
            "ttfb_ms": med([x.get("ttfb_ms", {}).get("p50") for x in v]),
            "mib_per_s": med([x.get("mib_per_s") for x in v]),
            "rss_growth_kb": max(growth) if growth else None,
            "sha256_ok": all(x.get("sha256_ok") is True for x in v),
            "errors": errors(v),
            "rounds": v,
        }
    log(
        "streaming: "
        + "; ".join(
            f"{k} SSE lag {fmt(sse_sum[k]['first_event_lag_ms'], 1)} ms, "
            f"10MiB TTFB {fmt(dl_sum[k]['ttfb_ms'], 1)} ms {fmt(dl_sum[k]['mib_per_s'])} MiB/s"
            for k in keys
        )
    )
    return sse_sum, dl_sum


def final_rss(r: Run, summary: dict[str, dict[str, Any]]) -> None:
    for key, entry in r.rss.items():
        col = r.cols.get(key)
        if col and col.pid and col.alive():
            entry["peak_kb"] = read_status_kb(col.pid, "VmHWM")
            entry["end_kb"] = read_status_kb(col.pid, "VmRSS")
        entry["peak_under_load_kb"] = (
            max((s.get("rss_peak_kb") or 0) for s in summary.get(key, {}).values()) or None
        )
