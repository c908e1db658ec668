"""Targets (SPEC §15) and the markdown / JSON reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import fastpath
from .common import ANCHOR_DIRECT_KA1_RPS, ANCHOR_MITM_ADDED_MS, ANCHOR_MITM_CPU_US, SCENARIOS


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def mib(kb: Any) -> str:
    return fmt(kb / 1024 if kb else None, 1)


def pct(x: Any) -> str:
    return fmt(x * 100 if x is not None else None, 0, "%")


def fmt(v: Any, nd: int = 0, suffix: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if nd == 0:
            return f"{v:,.0f}{suffix}"
        return f"{v:,.{nd}f}{suffix}"
    return f"{v}{suffix}"


def get(res: dict[str, Any], col: str, scen: str, metric: str) -> Any:
    return res.get("columns", {}).get(col, {}).get(scen, {}).get(metric)


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """SPEC §15, evaluated from this run's numbers. None = could not be measured."""
    t: list[dict[str, Any]] = []

    def add(name: str, target: str, value: Any, passed: bool | str | None, note: str = "") -> None:
        t.append({"target": name, "goal": target, "measured": value, "pass": passed, "note": note})

    av_ok = "agent-vault" in res.get("columns", {})

    def vs(a: str, b: str, scen: str, goal: float, label: str) -> None:
        """Judged on req/s as on a dedicated proxy core (other tenants' share of the core removed)."""
        raw = ratio(get(res, a, scen, "rps"), get(res, b, scen, "rps"))
        ded = ratio(get(res, a, scen, "rps_dedicated"), get(res, b, scen, "rps_dedicated"))
        add(
            label,
            f"≥ {goal} × plain mitmdump",
            fmt(ded, 2, " ×"),
            None if ded is None else ded >= goal,
            f"req/s on a dedicated proxy core; raw req/s ratio {fmt(raw, 2, ' ×')}",
        )

    vs("agent-vault", "mitmdump", "ka16", 1.5, "Throughput, injected, c=16 keep-alive")
    # Absolute targets assume an unloaded machine of the PERF-NOTES kind, where plain mitmdump costs
    # ~1,200 µs/request and adds ~1.3 ms at c=1. The notes rescale by this run's mitmdump so that a
    # slow or shared machine can still be read against the SPEC.
    cpu = get(res, "agent-vault", "ka16", "cpu_us_per_req")
    mcpu = get(res, "mitmdump", "ka16", "cpu_us_per_req")
    scaled = None if cpu is None or not mcpu else cpu * ANCHOR_MITM_CPU_US / mcpu
    add(
        "Proxy CPU per injected keep-alive request (c=16)",
        "≤ 800 µs",
        fmt(cpu, 0, " µs"),
        None if cpu is None else cpu <= 800,
        f"plain mitmdump here: {fmt(mcpu, 0, ' µs')} (PERF-NOTES: {ANCHOR_MITM_CPU_US:,} µs); "
        "rescaled to that "
        f"machine: {fmt(scaled, 0, ' µs')}"
        + ("" if scaled is None else f" ({'pass' if scaled <= 800 else 'fail'})"),
    )
    p_av, p_d = get(res, "agent-vault", "ka1", "p50_ms"), get(res, "direct", "ka1", "p50_ms")
    p_m = get(res, "mitmdump", "ka1", "p50_ms")
    added = None if p_av is None or p_d is None else p_av - p_d
    m_added = None if p_m is None or p_d is None else p_m - p_d
    scaled = None if added is None or not m_added else added * ANCHOR_MITM_ADDED_MS / m_added
    add(
        "Added p50 latency, c=1 keep-alive",
        "≤ 0.8 ms",
        fmt(added, 2, " ms"),
        None if added is None else added <= 0.8,
        f"plain mitmdump adds {fmt(m_added, 2, ' ms')} (PERF-NOTES: {ANCHOR_MITM_ADDED_MS} ms); rescaled: "
        f"{fmt(scaled, 2, ' ms')}" + ("" if scaled is None else f" ({'pass' if scaled <= 0.8 else 'fail'})"),
    )
    vs("agent-vault", "mitmdump", "nc16", 1.3, "New TLS connections/s, c=16")
    r = ratio(get(res, "av-tunnel", "ka16", "rps_dedicated"), get(res, "direct", "ka16", "rps"))
    r2 = ratio(
        get(res, "av-tunnel", "ka16", "rps_dedicated"), get(res, "mitmdump-ignore", "ka16", "rps_dedicated")
    )
    raw = ratio(get(res, "av-tunnel", "ka16", "rps"), get(res, "direct", "ka16", "rps"))
    add(
        "Unlisted host in tunnel mode, c=16 keep-alive",
        "≥ 0.5 × direct",
        fmt(r, 2, " × direct"),
        None if r is None else r >= 0.5,
        f"dedicated-core req/s; raw {fmt(raw, 2, ' ×')}; {fmt(r2, 2, ' ×')} mitmdump --ignore-hosts",
    )
    av = res.get("agent_vault", {})
    r = ratio(get(res, "av-10k", "ka16", "cpu_us_per_req"), get(res, "agent-vault", "ka16", "cpu_us_per_req"))
    r2 = ratio(get(res, "av-10k", "ka16", "rps_dedicated"), get(res, "agent-vault", "ka16", "rps_dedicated"))
    add(
        f"Matching with {av.get('services_big') or '10 000'} services vs 10",
        "no measurable difference (within 10 %)",
        fmt(r, 2, " × CPU/request"),
        None if r is None else r <= 1.1,
        f"c=16 keep-alive, big vault / 10-service vault; dedicated-core req/s {fmt(r2, 2, ' ×')}",
    )
    lag = res.get("sse", {}).get("agent-vault", {}).get("first_event_lag_ms")
    add(
        "SSE first event after the upstream sends it",
        "≤ 10 ms",
        fmt(lag, 1, " ms"),
        None if lag is None else lag <= 10,
    )
    dlr = res.get("download", {}).get("agent-vault", {})
    ttfb = dlr.get("ttfb_ms")
    add("10 MiB download TTFB", "≤ 10 ms", fmt(ttfb, 1, " ms"), None if ttfb is None else ttfb <= 10)
    g = dlr.get("rss_growth_kb")
    add(
        "10 MiB download RSS growth",
        "no growth with size (< 5 MiB for a 10 MiB body)",
        fmt(None if g is None else g / 1024, 1, " MiB"),
        None if g is None else g < 5 * 1024,
    )
    idle = res.get("rss", {}).get("agent-vault", {}).get("idle_kb")
    add(
        "Idle RSS",
        "≤ 120 MiB",
        fmt(None if idle is None else idle / 1024, 1, " MiB"),
        None if idle is None else idle <= 120 * 1024,
    )
    ic = res.get("idle_connections", {}).get("agent-vault", {})
    big = av.get("rss_big_services_kb")
    add(
        "RSS with idle keep-alive connections and big vault",
        "a figure the benchmark prints",
        f"{mib(ic.get('rss_holding_kb'))} MiB with "
        f"{ic.get('opened', '—')} conns; {fmt(big / 1024 if big else None, 1, ' MiB')} with "
        f"{av.get('services_big') or '—'} services",
        None if not ic or not big else "info",
        "informational",
    )
    rs = av.get("ready_s")
    add(
        "Server start to ready line (passwordless)", "< 2 s", fmt(rs, 2, " s"), None if rs is None else rs < 2
    )
    add(
        "Audit: 64 agents × 10 000 requests, 0 errors, 0 dropped",
        "—",
        "not measured",
        None,
        "640 000 requests take > 7 min at ~1.5k req/s: outside this benchmark's budget",
    )
    if not av_ok:
        for x in t:
            if x["pass"] is None and not x["note"]:
                x["note"] = "agent-vault column did not run"
    return t


def write_results(out: Path, res: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    tmp.replace(out / "latest.json")
    tmp = out / "latest.md.tmp"
    tmp.write_text(render_md(res))
    tmp.replace(out / "latest.md")


def render_md(res: dict[str, Any]) -> str:
    m = res.get("machine", {})
    cols = res.get("columns", {})
    L: list[str] = []
    L.append(f"# agent-vault benchmark — {res['date']}\n")
    L.append(
        f"Machine: `{m.get('arch')}`, {m.get('cpu_model')}, nproc {m.get('nproc')}, Linux {m.get('kernel')}; "
        f"Python {m.get('python')}, mitmproxy {m.get('mitmproxy')}, {m.get('nginx')}, {m.get('go')}.  "
    )
    c = res["config"]
    L.append(
        f"Run: {c['mode']}, {c['rounds']} interleaved round(s), {c['duration_s']} s timed window per cell "
        f"(+{c['warmup_s']} s warm-up), medians over rounds. Pinning: {res.get('pinning')}. "
        f"Wall time {res.get('elapsed_s')} s.\n"
    )
    for n in res.get("notes", []):
        L.append(f"**Note:** {n}\n")
    mcpu, dka1 = get(res, "mitmdump", "ka16", "cpu_us_per_req"), get(res, "direct", "ka1", "rps")
    if mcpu and dka1:
        L.append(
            f"Machine speed vs the PERF-NOTES anchors: plain mitmdump {mcpu:,.0f} µs/request "
            f"({mcpu / ANCHOR_MITM_CPU_US:.2f} × the anchor's {ANCHOR_MITM_CPU_US:,} µs), direct c=1 "
            f"{dka1:,.0f} req/s ({dka1 / ANCHOR_DIRECT_KA1_RPS:.2f} × {ANCHOR_DIRECT_KA1_RPS:,}). "
            "Well above 1 × CPU cost means a slower or shared machine: read the ratios, not the absolutes.\n"
        )
    av = res.get("agent_vault", {})
    if av.get("error"):
        L.append(f"**agent-vault column failed:** {av['error']}\n")
    for fb in av.get("cli_fallbacks") or []:
        L.append(f"**agent-vault CLI deviation from the contract:** {fb}\n")

    def row(label: str, vals: list[str]) -> None:
        L.append(f"| {label} | " + " | ".join(vals) + " |")

    def rps(col: str, s: str) -> Any:
        return get(res, col, s, "rps")

    L.append("## Side by side (HTTPS through each proxy to nginx, TLS 1.3, loopback)\n")
    L.append(
        "| metric | direct | plain mitmdump | agent-vault | agent-vault / mitmdump | agent-vault / direct |"
    )
    L.append("|---|---:|---:|---:|---:|---:|")

    def ded(col: str, s: str) -> Any:
        return get(res, col, s, "rps_dedicated")

    def dedicated_row(label: str, s: str) -> None:
        row(
            f"{label}: req/s on a dedicated proxy core",
            [
                "",
                fmt(ded("mitmdump", s)),
                fmt(ded("agent-vault", s)),
                fmt(ratio(ded("agent-vault", s), ded("mitmdump", s)), 2, " ×"),
                fmt(ratio(ded("agent-vault", s), rps("direct", s)), 3, " ×"),
            ],
        )

    for s in ("ka1", "ka16", "ka64"):
        label, _, _ = SCENARIOS[s]
        row(
            f"{label}: req/s",
            [
                fmt(rps("direct", s)),
                fmt(rps("mitmdump", s)),
                fmt(rps("agent-vault", s)),
                fmt(ratio(rps("agent-vault", s), rps("mitmdump", s)), 2, " ×"),
                fmt(ratio(rps("agent-vault", s), rps("direct", s)), 3, " ×"),
            ],
        )
        dedicated_row(label, s)
        row(
            f"{label}: p50 / p99 ms",
            [
                f"{fmt(get(res, k, s, 'p50_ms'), 2)} / {fmt(get(res, k, s, 'p99_ms'), 2)}"
                for k in ("direct", "mitmdump", "agent-vault")
            ]
            + ["", ""],
        )
    for s in ("nc1", "nc16"):
        label, _, _ = SCENARIOS[s]
        row(
            f"{label} (CONNECT + full TLS per request): req/s",
            [
                fmt(rps("direct", s)),
                fmt(rps("mitmdump", s)),
                fmt(rps("agent-vault", s)),
                fmt(ratio(rps("agent-vault", s), rps("mitmdump", s)), 2, " ×"),
                fmt(ratio(rps("agent-vault", s), rps("direct", s)), 3, " ×"),
            ],
        )
        dedicated_row(label, s)
    for s in ("ka1", "ka16", "ka64", "nc16"):
        a_, b_ = get(res, "agent-vault", s, "cpu_us_per_req"), get(res, "mitmdump", s, "cpu_us_per_req")
        row(
            f"proxy CPU µs/request, {SCENARIOS[s][0]}",
            ["—", fmt(b_), fmt(a_), fmt(ratio(a_, b_), 2, " ×"), ""],
        )
    busy = []
    for k in ("direct", "mitmdump", "agent-vault"):
        cb = get(res, k, "ka16", "core_busy") or {}
        busy.append(f"{pct(cb.get('cpu0'))} / {pct(cb.get('cpu1'))}")
    row("core0 / core1 busy, keep-alive c=16", busy + ["", ""])
    errs = [
        str(sum((v.get("errors") or 0) for v in cols.get(k, {}).values() if isinstance(v, dict)))
        if k in cols
        else "—"
        for k in ("direct", "mitmdump", "agent-vault")
    ]
    row("errors (all cells)", errs + ["", ""])

    def foreign(k: str) -> str:
        v = [
            x.get("foreign_load_proxy_core", {}).get("max")
            for x in cols.get(k, {}).values()
            if isinstance(x, dict)
        ]
        v = [x for x in v if x is not None]
        return fmt(max(v) * 100, 0, "%") if v else "—"

    row(
        "max load on the proxy core from other processes (noise)",
        [foreign(k) for k in ("direct", "mitmdump", "agent-vault")] + ["", ""],
    )
    sse, dl = res.get("sse", {}), res.get("download", {})
    row(
        "SSE first event, ms after the upstream sent it (p50)",
        [fmt(sse.get(k, {}).get("first_event_lag_ms"), 1) for k in ("direct", "mitmdump", "agent-vault")]
        + ["", ""],
    )
    row(
        "SSE time to first event from request (p50 ms; upstream waits 50 ms)",
        [fmt(sse.get(k, {}).get("ttfe_ms"), 1) for k in ("direct", "mitmdump", "agent-vault")] + ["", ""],
    )
    row(
        "10 MiB download TTFB ms",
        [fmt(dl.get(k, {}).get("ttfb_ms"), 2) for k in ("direct", "mitmdump", "agent-vault")] + ["", ""],
    )
    row(
        "10 MiB download MiB/s",
        [fmt(dl.get(k, {}).get("mib_per_s")) for k in ("direct", "mitmdump", "agent-vault")]
        + [
            fmt(
                ratio(dl.get("agent-vault", {}).get("mib_per_s"), dl.get("mitmdump", {}).get("mib_per_s")),
                2,
                " ×",
            ),
            fmt(
                ratio(dl.get("agent-vault", {}).get("mib_per_s"), dl.get("direct", {}).get("mib_per_s")),
                3,
                " ×",
            ),
        ],
    )
    row(
        "proxy RSS growth during the download, MiB",
        ["—"]
        + [
            fmt(
                (dl.get(k, {}).get("rss_growth_kb") or 0) / 1024
                if dl.get(k, {}).get("rss_growth_kb") is not None
                else None,
                1,
            )
            for k in ("mitmdump", "agent-vault")
        ]
        + ["", ""],
    )
    rss = res.get("rss", {})
    row(
        "proxy RSS idle / peak (VmHWM), MiB",
        ["—"]
        + [
            f"{mib(rss.get(k, {}).get('idle_kb'))} / {mib(rss.get(k, {}).get('peak_kb'))}"
            for k in ("mitmdump", "agent-vault")
        ]
        + ["", ""],
    )
    L.append("")

    L.append("## Unlisted host (tunnel.local): agent-vault tunnel mode vs direct\n")
    L.append(
        "| metric | direct | mitmdump --ignore-hosts | agent-vault tunnel | agent-vault / direct "
        "| agent-vault / mitmdump-ignore |"
    )
    L.append("|---|---:|---:|---:|---:|---:|")
    for s in ("ka1", "ka16", "nc16"):
        a_, d_, i_ = rps("av-tunnel", s), rps("direct", s), rps("mitmdump-ignore", s)
        row(
            f"{SCENARIOS[s][0]}: req/s",
            [fmt(d_), fmt(i_), fmt(a_), fmt(ratio(a_, d_), 2, " ×"), fmt(ratio(a_, i_), 2, " ×")],
        )
    a_, i_ = (
        get(res, "av-tunnel", "ka16", "rps_dedicated"),
        get(res, "mitmdump-ignore", "ka16", "rps_dedicated"),
    )
    d_ = rps("direct", "ka16")
    row(
        "keep-alive c=16: req/s on a dedicated proxy core",
        ["", fmt(i_), fmt(a_), fmt(ratio(a_, d_), 2, " ×"), fmt(ratio(a_, i_), 2, " ×")],
    )
    row(
        "keep-alive c=1: p50 ms",
        [fmt(get(res, k, "ka1", "p50_ms"), 2) for k in ("direct", "mitmdump-ignore", "av-tunnel")] + ["", ""],
    )
    a_, i_ = (
        get(res, "av-tunnel", "ka16", "cpu_us_per_req"),
        get(res, "mitmdump-ignore", "ka16", "cpu_us_per_req"),
    )
    row(
        "proxy CPU µs/request, keep-alive c=16",
        ["—", fmt(i_, 1), fmt(a_, 1), "", fmt(ratio(a_, i_), 2, " ×")],
    )
    L.append("")

    L.append(
        f"## Service count: {av.get('services_big') or '—'} services vs 10 "
        "(agent-vault, bench service last)\n"
    )
    if av.get("error_10k"):
        L.append(f"**10k-services case failed:** {av['error_10k']}\n")
    L.append("| metric | 10 services | big vault | big / 10 |")
    L.append("|---|---:|---:|---:|")
    for s in ("ka1", "ka16"):
        a_, b_ = rps("agent-vault", s), rps("av-10k", s)
        row(f"{SCENARIOS[s][0]}: req/s", [fmt(a_), fmt(b_), fmt(ratio(b_, a_), 3, " ×")])
        a_, b_ = ded("agent-vault", s), ded("av-10k", s)
        row(
            f"{SCENARIOS[s][0]}: req/s on a dedicated proxy core",
            [fmt(a_), fmt(b_), fmt(ratio(b_, a_), 3, " ×")],
        )
    a_, b_ = get(res, "agent-vault", "ka1", "cpu_us_per_req"), get(res, "av-10k", "ka1", "cpu_us_per_req")
    row("proxy CPU µs/request, c=1", [fmt(a_), fmt(b_), fmt(ratio(b_, a_), 3, " ×")])
    a_, b_ = get(res, "agent-vault", "ka16", "cpu_us_per_req"), get(res, "av-10k", "ka16", "cpu_us_per_req")
    row("proxy CPU µs/request, c=16", [fmt(a_), fmt(b_), fmt(ratio(b_, a_), 3, " ×")])
    row("server RSS, MiB", [mib(av.get("rss_10_services_kb")), mib(av.get("rss_big_services_kb")), ""])
    row("time to load the big vault (PUT services), s", ["", fmt(av.get("services_load_s"), 2), ""])
    L.append("")

    idle = res.get("idle_connections", {})
    if idle:
        L.append("## Idle keep-alive connections held open (CONNECT + TLS + one request each)\n")
        L.append(
            "| proxy | connections | open time s | RSS before → holding, MiB | KiB per connection "
            "| alive after hold |"
        )
        L.append("|---|---:|---:|---:|---:|---:|")
        for k, e in idle.items():
            row(
                k,
                [
                    fmt(e.get("opened")),
                    fmt(e.get("open_s"), 1),
                    f"{mib(e.get('rss_before_kb'))} → {mib(e.get('rss_holding_kb'))}",
                    fmt(e.get("kb_per_conn"), 1),
                    fmt(e.get("done", {}).get("alive_after_hold")),
                ],
            )
        L.append("")

    from .replicas import render as replicas_section  # at call time: replicas imports this module

    L += fastpath.render(res.get("fast_path")) + replicas_section(res)
    L.append("## SPEC §15 targets\n")
    L.append("| target | goal | measured | result | note |")
    L.append("|---|---|---|---|---|")
    for t in res.get("targets", []):
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a", "info": "info"}[t["pass"]]
        L.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {verdict} | {t['note']} |")
    L.append("")
    L.append(
        "Ratios compare columns measured in the same run, interleaved, on the same pinned core; "
        "differences under ~10 % are noise (PERF-NOTES.md). Raw per-round numbers: latest.json.\n"
    )
    return "\n".join(L)
