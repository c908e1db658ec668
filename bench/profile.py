#!/usr/bin/env python3
"""Profile agent-vault's request path: keep-alive load through the proxy under py-spy.

    python bench/profile.py                 # c=16 keep-alive, 10 s, flame graph + top functions
    python bench/profile.py --no-spy -d 5   # just the load: req/s and proxy CPU µs/request
    python bench/profile.py --mitmdump      # the same load through plain mitmdump, side by side
    python bench/profile.py --cprofile --fast-path on --path /echo   # the fast path, grouped by component

Same upstream, pinning and agent-vault setup as bench/run.py (nginx TLS 1.3 on bench.local, the
injecting service, proxy pinned to core 0). Output goes to bench/results/profile-*.{svg,txt}.
py-spy must be installed in the venv (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BENCH_DIR, VENV, prepare_process, reexec_in_venv  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", type=int, default=16, help="keep-alive connections (default 16)")
    ap.add_argument("-d", type=float, default=10.0, help="seconds of load (default 10)")
    ap.add_argument("--path", default="/", help="upstream path (default /)")
    ap.add_argument("--tunnel", action="store_true", help="the unlisted host (agent-vault tunnel mode)")
    ap.add_argument("--new-conn", action="store_true", help="a new connection (CONNECT + TLS) per request")
    ap.add_argument("--no-spy", action="store_true", help="measure only, no profiler attached")
    ap.add_argument("--cprofile", action="store_true", help="run the server under cProfile instead of py-spy")
    ap.add_argument("--mitmdump", action="store_true", help="also measure plain mitmdump")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved measurement rounds")
    ap.add_argument(
        "--fast-path", choices=("on", "off"), help="start the server with --fast-path on|off (issue #24)"
    )
    return ap.parse_args()


def top_functions(raw: Path, n: int = 40) -> str:
    """Self and total sample share per function from py-spy's collapsed-stack output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        count = int(count_s)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            total[f] = total.get(f, 0) + count
    out = [f"{samples} samples", "", "self%  total%  function"]
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        out.append(f"{100 * c / samples:5.1f}  {100 * total[f] / samples:6.1f}  {f}")
    out += ["", "total% (inclusive), top:"]
    for f, c in sorted(total.items(), key=lambda kv: -kv[1])[: n * 2]:
        out.append(f"{100 * c / samples:6.1f}  {f}")
    return "\n".join(out)


def thread_ticks(pid: int) -> dict[int, int]:
    """utime+stime clock ticks per thread of `pid`."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


def proxied_requests(api: str) -> int:
    """Requests the server proxied so far (agent_vault_proxy_requests_total, every label), 0 if unknown."""
    import urllib.request

    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(api + "/metrics", timeout=30) as resp:
            text = resp.read().decode()
    except OSError:
        return 0
    lines = [ln for ln in text.splitlines() if ln.startswith("agent_vault_proxy_requests_total")]
    return int(sum(float(ln.rsplit(" ", 1)[1]) for ln in lines))


def main() -> int:
    from benchlib import phases
    from benchlib.agentvault import start_agent_vault
    from benchlib.common import CORES, PROCS, log, pin_threads
    from benchlib.loadgen import Column, common_args, loadgen
    from benchlib.upstreams import (
        build_loadgen,
        ensure_hosts,
        ensure_tools,
        make_pki,
        start_mitmdump,
        start_nginx,
        wait_mitmdump,
    )

    a = parse_args()
    prof = BENCH_DIR / "results" / "profile.prof"
    if a.cprofile:
        a.no_spy = True
        prof.unlink(missing_ok=True)
        wrap = BENCH_DIR / "cprof_wrap.py"  # records only between SIGUSR1 and SIGUSR2 (the timed load)
        # -P: no bench/ on sys.path, where profile.py would shadow the stdlib's `profile` (cProfile needs it)
        os.environ["AV_BENCH_SERVER_WRAP"] = f"{VENV / 'bin' / 'python'} -P {wrap} {prof}"
    prepare_process(10)
    work = Path(tempfile.mkdtemp(prefix="av-profile-"))
    r = phases.Run(cfg={}, work=work, clk_tck=os.sysconf("SC_CLK_TCK"))
    out = BENCH_DIR / "results"

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        tools = ensure_tools()
        build_loadgen(tools["go"])
        ensure_hosts()
        r.pki = make_pki(work)
        r.ngx_port, _ = start_nginx(tools["nginx"], work, r.pki)
        start_agent_vault(work, r.pki, r.av, ("--fast-path", a.fast_path) if a.fast_path else ())
        up = r.pki["ca"]
        avp = f"http://{r.av.token}:default@127.0.0.1:{r.av.proxy_port}"
        cols = [
            Column(
                "agent-vault",
                "agent-vault",
                "tunnel.local" if a.tunnel else "bench.local",
                avp,
                r.av.proc,
                [],
                [up, r.av.ca],
            )
        ]
        if a.mitmdump:
            mitm, port, ca = start_mitmdump(work, r.pki, "mitmdump", [])
            wait_mitmdump("mitmdump", mitm, port, ca)
            cols.append(
                Column("mitmdump", "mitmdump", "bench.local", f"http://127.0.0.1:{port}", mitm, [], [up, ca])
            )
        load_args: dict[str, list[str]] = {}
        for col in cols:
            assert col.pid is not None
            pin_threads(col.pid, CORES["proxy"])
            r.cols[col.key] = col
            load_args[col.key] = ["-mode", "load", *common_args(col, r.ngx_port, a.path), "-c", str(a.c)]
            load_args[col.key] += ["-new-conn"] if a.new_conn else []
            loadgen([*load_args[col.key], "-d", "1s"], timeout=60)  # warm-up
        spy: subprocess.Popen[Any] | None = None
        raw = out / "profile-collapsed.txt"
        if not a.no_spy:
            assert r.av.proc is not None
            spy = subprocess.Popen(
                [
                    str(VENV / "bin" / "py-spy"),
                    "record",
                    "-p",
                    str(r.av.proc.pid),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "-d",
                    str(int(a.d) + 1),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        served0 = proxied_requests(r.av.api)
        if a.cprofile and r.av.proc is not None:
            os.kill(r.av.proc.pid, signal.SIGUSR1)
        for rnd in range(a.rounds):
            for col in cols:
                before = thread_ticks(col.pid) if col.pid else {}
                res = loadgen([*load_args[col.key], "-d", f"{a.d}s", "-warmup", "0.3s"], timeout=a.d + 60)
                after = thread_ticks(col.pid) if col.pid else {}
                spent = {t: after[t] - before.get(t, 0) for t in after}
                main_t = spent.pop(col.pid or 0, 0)
                log(f"  CPU ticks: main thread {main_t}, other threads {sum(spent.values())}")
                log(
                    f"round {rnd + 1}: ERROR {res['error']}"
                    if "error" in res
                    else phases.describe(r, col.key, f"c={a.c}", res)
                )
        if a.cprofile and r.av.proc is not None:
            os.kill(r.av.proc.pid, signal.SIGUSR2)
            for _ in range(200):  # bounded: up to 20 s for the dump
                if prof.exists():
                    break
                time.sleep(0.1)
        served = proxied_requests(r.av.api) - served0
        if spy is not None:
            spy.wait(timeout=60)
            (out / "profile-top.txt").write_text(top_functions(raw))
            log(f"profile: {raw} and {out / 'profile-top.txt'}")
    finally:
        PROCS.stop_all()
    if a.cprofile:
        import pstats

        st = pstats.Stats(str(prof))
        st.sort_stats("tottime").print_stats(35)
        st.sort_stats("cumulative").print_stats("agent_vault|prometheus|addonmanager", 40)
        if served:
            from benchlib import profgroups

            text = profgroups.render(profgroups.groups(prof, served), served)
            (out / "profile-groups.txt").write_text(text + "\n")
            print(text)
    return 0


if __name__ == "__main__":
    reexec_in_venv()
    sys.exit(main())
