"""The fast-path comparison (issue #24): agent-vault `--fast-path on` vs `off` vs plain mitmdump vs direct.

Three extra agent-vault servers (same set-up as the main column): `--fast-path off`, `on`, and `on` with
`--offer-h2 off` (the HTTP/2 scenario's client then falls back to HTTP/1.1 and takes the fast path); every
request goes to nginx's `/echo`, which answers `{"authorization":"<the request's Authorization>"}`, so
through agent-vault the injected credential comes back in the body and response redaction does real work
(the check below requires `[REDACTED` and no secret in what the client gets). Scenarios: keep-alive c=1 and
c=16, new connections c=16, a 10 MiB download, idle RSS, proxy CPU µs/request; interleaved rounds, medians.
The issue's targets are judged in `targets`; `render` gives the markdown section.

A fifth column, the **relay floor** (`bench/relay.py`): the least a Python TLS-intercepting proxy does
(CONNECT, TLS on both sides with the standard library, one header added, nothing checked), so the fast
path's cost reads against what transport alone costs on this machine. It runs every scenario but HTTP/2.
"""

from __future__ import annotations

import re
import sys
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from . import report
from .agentvault import AgentVault, start_agent_vault
from .common import (
    BENCH,
    BENCH_HOST,
    CORES,
    SECRET,
    BenchError,
    free_port,
    log,
    pin_threads,
    read_status_kb,
    spawn,
    wait_port,
)
from .loadgen import Column, check, common_args, loadgen, med, summarize

ECHO = "/echo"
REDACTED = "[REDACTED"
SERVERS = {  # column -> server flags
    "av-fast-off": ("--fast-path", "off"),
    "av-fast-on": ("--fast-path", "on"),
    "av-fast-h1": ("--fast-path", "on", "--offer-h2", "off"),  # h2 clients fall back to HTTP/1.1
}
SCEN = {"ka1": ("keep-alive c=1", 1, False), "ka16": ("keep-alive c=16", 16, False)}
SCEN["nc16"] = ("new connection c=16", 16, True)
SCEN["h2ka16"] = ("HTTP/2 keep-alive c=16", 16, False)  # loadgen -h2: Go's client, offers h2 + http/1.1
KEYS = ("direct", "relay", "mitmdump", "av-fast-off", "av-fast-on", "av-fast-h1")
LABELS = {
    "direct": "direct",
    "relay": "relay floor",
    "mitmdump": "plain mitmdump",
    "av-fast-off": "agent-vault --fast-path off",
    "av-fast-on": "agent-vault --fast-path on",
    "av-fast-h1": "agent-vault on, --offer-h2 off",
}


@dataclass
class FastPath:
    servers: dict[str, AgentVault] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cols: dict[str, Column] = field(default_factory=dict)
    idle_rss_kb: dict[str, int | None] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)


def start(r: Any) -> FastPath:
    """Start one server per setting; a server that fails (e.g. no --fast-path flag) only drops its column."""
    fp = FastPath()
    for key, flags in SERVERS.items():
        av = AgentVault()
        try:
            start_agent_vault(r.work, r.pki, av, flags, name=key)
        except Exception as e:  # noqa: BLE001 - the column fails, the bench carries on
            fp.errors[key] = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            log(f"{key} column failed: {fp.errors[key]}")
            continue
        fp.servers[key] = av
        proxy = f"http://{av.token}:default@127.0.0.1:{av.proxy_port}"
        fp.cols[key] = Column(key, LABELS[key], BENCH_HOST, proxy, av.proc, list(SCEN), [r.pki["ca"], av.ca])
        log(f"{key} ready in {av.ready_s}s: proxy=:{av.proxy_port}")
    for key in ("direct", "mitmdump"):
        if key in r.cols:
            fp.cols[key] = r.cols[key]
    _start_relay(r, fp)
    for key in [k for k in fp.cols if k.startswith("av-fast")]:
        res = check(fp.cols[key], r.ngx_port, ECHO)
        fp.checks[key] = {k: v for k, v in res.items() if k != "tls"}
        body = str(res.get("body", ""))
        if res.get("status") != 200 or REDACTED not in body or SECRET in body:
            fp.errors[key] = f"echo check failed (want 200, {REDACTED}..., no secret): {str(res)[:300]}"
            log(f"{key} column failed: {fp.errors[key]}")
            fp.cols.pop(key)
    return fp


def _start_relay(r: Any, fp: FastPath) -> None:
    """The relay floor column (bench/relay.py), on the proxy core like the proxies."""
    port = free_port()
    pki = r.pki
    cmd = [sys.executable, str(BENCH / "relay.py"), str(port), pki["cert"], pki["key"], pki["ca"], SECRET]
    proc = spawn("relay", cmd, r.work / "relay.log", "proxy")
    try:
        wait_port(port, 15, proc)
    except BenchError as e:
        fp.errors["relay"] = str(e)
        log(f"relay column failed: {e}")
        return
    scen = [s for s in SCEN if not s.startswith("h2")]  # it speaks HTTP/1.1 only
    fp.cols["relay"] = Column(
        "relay", LABELS["relay"], BENCH_HOST, f"http://127.0.0.1:{port}", proc, scen, [pki["ca"]]
    )


def idle_rss(fp: FastPath) -> None:
    """RSS after start and checks, before any load (call once the servers have settled)."""
    for key, col in fp.cols.items():
        if col.pid:
            fp.idle_rss_kb[key] = read_status_kb(col.pid, "VmRSS")


def _args(col: Column, port: int, conc: int, extra: list[str], scen: str = "") -> list[str]:
    a = ["-mode", "load", *common_args(col, port, ECHO), "-c", str(conc), *extra]
    a += ["-h2"] if scen.startswith("h2") else []
    a += ["-h2-fallback"] if scen.startswith("h2") and col.key == "av-fast-h1" else []  # answers in HTTP/1.1
    if col.key.startswith("av-fast"):
        a += ["-expect-body", REDACTED]  # every response redacted, or it counts as an error
    return a


def measure(r: Any, fp: FastPath) -> dict[str, Any]:
    """Warm-up, then interleaved rounds of every scenario over every column, then the 10 MiB download."""
    keys = [k for k in KEYS if k in fp.cols]
    d, w = r.cfg["duration_s"], r.cfg["warmup_s"]
    for key in keys:
        loadgen(_args(fp.cols[key], r.ngx_port, 16, ["-d", "0.3s", "-warmup", "0.2s"]), timeout=60)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {k: {s: [] for s in SCEN} for k in keys}
    dl: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for rnd in range(r.cfg["rounds"]):
        log(f"fast path round {rnd + 1}/{r.cfg['rounds']}")
        for scen, (label, conc, new_conn) in SCEN.items():
            order = keys[rnd % len(keys) :] + keys[: rnd % len(keys)]
            for key in order:
                col = fp.cols[key]
                if col.scenarios and scen not in col.scenarios:
                    continue
                if not col.alive():
                    raw[key][scen].append({"error": "proxy process exited"})
                    continue
                if col.pid:
                    pin_threads(col.pid, CORES["proxy"])
                extra = ["-d", f"{d}s", "-warmup", f"{min(w, 0.25) if new_conn else w}s"]
                extra += ["-new-conn"] if new_conn else []
                res = loadgen(_args(col, r.ngx_port, conc, extra, scen), timeout=d + w + 40)
                raw[key][scen].append(res)
                cpu = ""
                if res.get("requests") and "proxy_cpu_ticks" in res:
                    cpu = f", {res['proxy_cpu_ticks'] * 1e6 / r.clk_tck / res['requests']:.0f} µs/req"
                got = f"{res['rps']:,.0f} req/s, err {res['errors']}{cpu}" if "rps" in res else ""
                log(f"  {key} {label}: {got or 'ERROR ' + str(res.get('error'))}")
        for key in keys:
            col = fp.cols[key]
            args = ["-mode", "download", *common_args(col, r.ngx_port, "/10m"), "-expect-sha256", r.blob_sha]
            dl[key].append(loadgen([*args, "-n", str(r.cfg["download_samples"])], timeout=180))
    out: dict[str, Any] = {"columns": {}, "download": {}, "idle_rss_kb": fp.idle_rss_kb, "errors": fp.errors}
    for key in keys:
        out["columns"][key] = {s: summarize(v, r.clk_tck) for s, v in raw[key].items()}
        ok = [x for x in dl[key] if "error" not in x]
        out["download"][key] = {
            "mib_per_s": med([x.get("mib_per_s") for x in ok]),
            "ttfb_ms": med([x.get("ttfb_ms", {}).get("p50") for x in ok]),
            "sha256_ok": bool(ok) and all(x.get("sha256_ok") is True for x in ok),
            "errors": len(dl[key]) - len(ok) + sum(x.get("errors", 0) for x in ok),
            "rounds": dl[key],
        }
    out["checks"] = fp.checks
    out["served_by_path"] = {k: served_by_path(av.api) for k, av in fp.servers.items() if k in keys}
    out["targets"] = targets(out)
    return out


def served_by_path(api: str) -> dict[str, int]:
    """agent_vault_proxy_path_requests_total by its `path` label ("fast" / "engine")."""
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(api + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
    except OSError as e:
        return {f"error: {e}": 0}
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("agent_vault_proxy_path_requests_total{"):
            m = re.search(r'path="([^"]*)"', line)
            key = m.group(1) if m else "?"
            out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def _get(res: dict[str, Any], key: str, scen: str, metric: str) -> Any:
    return res.get("columns", {}).get(key, {}).get(scen, {}).get(metric)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """`--fast-path on` judged from this run's numbers (None: not measured) against two goals each: issue
    #24's original one and the one adopted when the issue closed (README "Fast path", "Decision")."""
    t: list[dict[str, Any]] = []

    def add(
        name: str, value: Any, shown: str, issue: tuple[str, Any], adopted: tuple[str, Any], note: str = ""
    ) -> None:
        """`issue` and `adopted` are (goal text, predicate on `value`)."""

        def judge(pred: Any) -> bool | None:
            return None if value is None else bool(pred(value))

        t.append(
            {
                "target": name,
                "measured": shown,
                "goal": issue[0],
                "pass": judge(issue[1]),
                "adopted_goal": adopted[0],
                "adopted_pass": judge(adopted[1]),
                "note": note,
            }
        )

    on_ded = _get(res, "av-fast-on", "ka16", "rps_dedicated")
    raw = report.fmt(_get(res, "av-fast-on", "ka16", "rps"))
    add(
        "Injected keep-alive c=16, req/s per core",
        on_ded,
        report.fmt(on_ded),
        ("≥ 5,000", lambda v: v >= 5000),
        ("≥ 1,500", lambda v: v >= 1500),
        f"dedicated proxy core; raw {raw}",
    )
    x = report.ratio(on_ded, _get(res, "mitmdump", "ka16", "rps_dedicated"))
    add(
        "… vs plain mitmdump",
        x,
        report.fmt(x, 2, " ×"),
        ("≥ 6 ×", lambda v: v >= 6),
        ("≥ 3 × (SPEC §15: ≥ 1.5 ×)", lambda v: v >= 3),
    )
    cpu = _get(res, "av-fast-on", "ka16", "cpu_us_per_req")
    off_cpu = _get(res, "av-fast-off", "ka16", "cpu_us_per_req")
    add(
        "Proxy CPU per injected request (c=16)",
        cpu,
        report.fmt(cpu, 0, " µs"),
        ("≤ 200 µs", lambda v: v <= 200),
        ("≤ 600 µs (SPEC §15: ≤ 800 µs)", lambda v: v <= 600),
        f"--fast-path off: {report.fmt(off_cpu, 0, ' µs')}",
    )
    p_on, p_d = _get(res, "av-fast-on", "ka1", "p50_ms"), _get(res, "direct", "ka1", "p50_ms")
    added = None if p_on is None or p_d is None else p_on - p_d
    floor = _get(res, "relay", "ka1", "p50_ms")
    add(
        "Added p50 latency, c=1",
        added,
        report.fmt(added, 2, " ms"),
        ("≤ 0.3 ms", lambda v: v <= 0.3),
        ("≤ 0.8 ms (SPEC §15)", lambda v: v <= 0.8),
        "" if floor is None or p_d is None else f"relay floor adds {report.fmt(floor - p_d, 2, ' ms')}",
    )
    nc_on = _get(res, "av-fast-on", "nc16", "rps_dedicated")
    x = report.ratio(nc_on, _get(res, "mitmdump", "nc16", "rps_dedicated"))
    two_x = ("≥ 2 × plain mitmdump", lambda v: v >= 2)
    add("New connections c=16", x, report.fmt(x, 2, " ×"), two_x, two_x)
    dl = res.get("download", {})
    a_, m_ = dl.get("av-fast-on", {}).get("mib_per_s"), dl.get("mitmdump", {}).get("mib_per_s")
    r = report.ratio(a_, m_)
    at_least = ("≥ plain mitmdump", lambda v: v >= 1)
    add("10 MiB download MiB/s", r, f"{report.fmt(a_)} vs {report.fmt(m_)}", at_least, at_least)
    rss = res.get("idle_rss_kb", {})
    on, off = rss.get("av-fast-on"), rss.get("av-fast-off")
    extra = None if on is None or off is None else on - off
    same = ("not above --fast-path off, 2 MiB noise", lambda v: v <= 2048)
    add("Idle RSS", extra, f"{report.mib(on)} vs {report.mib(off)} MiB", same, same)
    return t


def render(res: dict[str, Any] | None) -> list[str]:
    """The markdown section (empty when the fast-path comparison did not run)."""
    if not res:
        return []
    keys = [k for k in KEYS if k in res.get("columns", {})]
    L = ["## Fast path (issue #24): injected requests to an upstream that echoes the credential\n"]
    for k, e in res.get("errors", {}).items():
        L.append(f"**{k} column failed:** {e}\n")
    if not keys:
        return L
    L.append(
        "| metric | " + " | ".join(LABELS[k] for k in keys) + " | on / off | on / mitmdump | on / floor |"
    )
    L.append("|---" + "|---:" * (len(keys) + 3) + "|")

    def row(label: str, vals: list[Any], nd: int = 0, rat: bool = True) -> None:
        by = dict(zip(keys, vals, strict=True))
        cells = [report.fmt(float(v) if isinstance(v, int) else v, nd) for v in vals]
        if rat:
            cells += [
                report.fmt(report.ratio(by.get("av-fast-on"), by.get("av-fast-off")), 2, " ×"),
                report.fmt(report.ratio(by.get("av-fast-on"), by.get("mitmdump")), 2, " ×"),
                report.fmt(report.ratio(by.get("av-fast-on"), by.get("relay")), 2, " ×"),
            ]
        else:
            cells += ["", "", ""]
        L.append(f"| {label} | " + " | ".join(cells) + " |")

    for s, (label, _, _) in SCEN.items():
        row(f"{label}: req/s", [_get(res, k, s, "rps") for k in keys])
        row(f"{label}: req/s on a dedicated proxy core", [_get(res, k, s, "rps_dedicated") for k in keys])
    for s in ("ka1", "ka16"):
        row(f"{SCEN[s][0]}: p50 ms", [_get(res, k, s, "p50_ms") for k in keys], 2, rat=False)
    for s in SCEN:
        row(f"proxy CPU µs/request, {SCEN[s][0]}", [_get(res, k, s, "cpu_us_per_req") for k in keys])
    dl = res.get("download", {})
    row("10 MiB download MiB/s", [dl.get(k, {}).get("mib_per_s") for k in keys])
    row("10 MiB download TTFB ms", [dl.get(k, {}).get("ttfb_ms") for k in keys], 1, rat=False)
    rss = res.get("idle_rss_kb", {})
    row("idle RSS MiB", [None if rss.get(k) is None else rss[k] / 1024 for k in keys], 1)
    errs = [sum((v.get("errors") or 0) for v in res["columns"][k].values()) for k in keys]
    row("errors (all cells; agent-vault: a response without redaction counts)", errs, rat=False)
    fl = []
    for k in keys:
        v = [c.get("foreign_load_proxy_core", {}).get("max") for c in res["columns"][k].values()]
        v = [x for x in v if x is not None]
        fl.append(max(v) * 100 if v else None)
    row("max load on the proxy core from other processes, %", fl, rat=False)
    by_path = res.get("served_by_path", {})
    paths = [", ".join(f"{p}: {n:,}" for p, n in sorted(by_path.get(k, {}).items())) for k in keys]
    L.append("| requests served, by path (/metrics) | " + " | ".join(paths) + " |  |  |  |")
    L.append("")
    L.append("| `--fast-path on` | measured | issue #24's goal | result | adopted goal | result | note |")
    L.append("|---|---|---|---|---|---|---|")
    verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}
    for t in res.get("targets", []):
        L.append(
            f"| {t['target']} | {t['measured']} | {t['goal']} | {verdict[t['pass']]} "
            f"| {t.get('adopted_goal', '')} | {verdict[t.get('adopted_pass')]} | {t['note']} |"
        )
    L.append("")
    return L
