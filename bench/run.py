#!/usr/bin/env python3
"""agent-vault benchmark: direct vs plain mitmdump vs agent-vault, side by side, in one run.

    python bench/run.py            # full run, ~4-5 minutes on 2 cores
    python bench/run.py --quick    # smoke run, < 60 s

Loopback only. The proxy under test is pinned to core 0, the load generator and the
upstreams to core 1; rounds are interleaved so drift hits every column alike.
Writes bench/results/latest.json and bench/results/latest.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR.parent / ".venv"


def reexec_in_venv() -> None:
    """Run under the repo's venv (trustme, mitmproxy) whatever `python` the user typed."""
    vpy = VENV / "bin" / "python"
    if (
        vpy.exists()
        and Path(sys.prefix).resolve() != VENV.resolve()
        and not os.environ.get("AV_BENCH_NO_REEXEC")
    ):
        os.environ["AV_BENCH_NO_REEXEC"] = "1"
        os.execv(str(vpy), [str(vpy), str(Path(__file__).resolve()), *sys.argv[1:]])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="timed window per cell, seconds (default 1.5, quick 0.4)")
    ap.add_argument("--services", type=int, help="services in the big vault (default 10000, quick 1000)")
    ap.add_argument(
        "--idle-conns", type=int, help="idle keep-alive connections held (default 1000, quick 50)"
    )
    ap.add_argument("--skip-agent-vault", action="store_true", help="only direct and mitmdump")
    ap.add_argument(
        "--skip-fast-path", action="store_true", help="no --fast-path on/off comparison (issue #24)"
    )
    ap.add_argument(
        "--only-fast-path",
        action="store_true",
        help="only the --fast-path on/off comparison with direct and mitmdump (skips the other tables)",
    )
    ap.add_argument(
        "--nice", type=int, default=10, help="run at nice -N (root only; 0 = leave priority alone)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configs)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results directory")
    return ap.parse_args()


def prepare_process(nice: int) -> str:
    """Limits, priority and pinning for the harness; every child inherits them."""
    from benchlib.common import CORES

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    # On a shared machine other tenants' processes land on our cores; a higher CFS weight keeps
    # them from taking most of the proxy core in the middle of a cell.
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -abs(nice))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "none (fewer than 2 CPUs available)"
    CORES["proxy"], CORES["other"] = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(0, set(cpus[1:]))
    return f"proxy on cpu{cpus[0]}, loadgen + upstreams + harness on cpu{','.join(map(str, cpus[1:]))}"


def main() -> int:
    from benchlib import fastpath, phases, replicas
    from benchlib.common import PROCS, BenchError, log, machine_info, machine_load
    from benchlib.report import evaluate_targets, render_md, write_results
    from benchlib.upstreams import build_loadgen, ensure_hosts, ensure_tools

    a = parse_args()
    if a.only_fast_path:  # a partial run must not replace the full run's latest.md
        a.out = a.out / "fastpath"
    q = a.quick
    cfg: dict[str, Any] = {
        "mode": "quick" if q else "full",
        "rounds": a.rounds or (1 if q else 3),
        "duration_s": a.duration or (0.4 if q else 1.5),
        "warmup_s": 0.3 if q else 0.5,
        "services_big": a.services or (1000 if q else 10000),
        "idle_conns": a.idle_conns or (50 if q else 1000),
        "sse_samples": 2 if q else 5,
        "download_samples": 2 if q else 3,
    }
    t_start = time.monotonic()
    pinning = prepare_process(a.nice)
    cfg["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    log(f"pinning: {pinning}")
    notes: list[str] = []
    bg = machine_load(1.0)
    if bg > 0.25:
        notes.append(f"machine busy before start: other processes used {bg} cores; numbers will be noisy")
        log(f"WARNING: {notes[-1]}")
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": cfg,
        "pinning": pinning,
        "notes": notes,
        "background_load_cores": bg,
    }

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="av-bench-"))
    r = phases.Run(cfg=cfg, work=work, clk_tck=os.sysconf("SC_CLK_TCK"))
    try:
        tools = ensure_tools()
        build_loadgen(tools["go"])
        result["machine"] = machine_info()
        result["hosts"] = ensure_hosts()
        phases.start(r, tools["nginx"], a.skip_agent_vault or a.only_fast_path)
        phases.run_checks(r)
        fast = None if a.skip_fast_path or a.skip_agent_vault else fastpath.start(r)
        if not a.only_fast_path:
            replicas.start(r)  # "agent-vault x2 (reuse-port)": two replicas on one port
        phases.idle_rss_and_big_vault(r)
        if fast is not None:
            fastpath.idle_rss(fast)
        summary: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        sse: dict[str, Any] = {}
        download: dict[str, Any] = {}
        if not a.only_fast_path:
            phases.warm_up(r)
            summary = phases.rounds(r)
            idle = phases.idle_connections(r)
            sse, download = phases.streaming(r)
            phases.final_rss(r, summary)
        result["fast_path"] = None if fast is None else fastpath.measure(r, fast)
        av = r.av
        result.update(
            {
                "ports": r.ports,
                "checks": r.checks,
                "columns": {k: {"label": r.cols[k].label, **summary[k]} for k in summary},
                "sse": sse,
                "download": download,
                "rss": r.rss,
                "idle_connections": idle,
                "agent_vault": {
                    "error": av.error,
                    "error_10k": av.error_big,
                    "ready_s": av.ready_s,
                    "cli_fallbacks": av.cli_fallbacks,
                    "services_big": av.services_big,
                    "services_load_s": av.services_load_s,
                    "rss_10_services_kb": av.rss_10_services_kb,
                    "rss_big_services_kb": av.rss_big_services_kb,
                },
            }
        )
        result["targets"] = evaluate_targets(result)
        result["elapsed_s"] = round(time.monotonic() - t_start, 1)
        write_results(a.out, result)
        print(render_md(result), flush=True)
        if av.error and not a.skip_agent_vault:
            print(f"agent-vault column failed: {av.error}", flush=True)
        log(f"done in {result['elapsed_s']}s; wrote {a.out / 'latest.json'} and {a.out / 'latest.md'}")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as e:
        print(f"bench failed: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        PROCS.stop_all()
        if a.keep:
            log(f"scratch kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    reexec_in_venv()
    sys.path.insert(0, str(BENCH_DIR))
    sys.exit(main())
