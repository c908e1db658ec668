"""The one-host scale-out column: "agent-vault x2 (reuse-port)", two replicas bound to ONE proxy port.

Both replicas serve the same instance (same CA, DEK, agent token, services): each runs on a copy of the
agent-vault column's home made with SQLite's backup API once that column is set up. Two processes must
never share one SQLite file (single writer), and nothing on the request path reads the database, so
the copies measure what `--reuse-port` is about: the kernel spreading new connections over two
processes, one core each. With PostgreSQL the replicas would share one database instead
(README "Deployment: several replicas"); the hot path is the same.

Pinning: replica 1 on the proxy core (like the single agent-vault column), replica 2 on the other core,
which it shares with the load generator and the upstreams -- on a 2-core machine the ratio therefore
understates what two free cores give. The report shows the ratio to the single-process column.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from .agentvault import av_env, av_exe
from .common import BENCH_HOST, CORES, BenchError, free_port, log, pin_threads, read_line, spawn
from .loadgen import Column
from .report import fmt, ratio

KEY = "av-x2"
LABEL = "agent-vault x2 (reuse-port)"
SCENARIOS = ["ka16", "ka64", "nc16"]  # several connections, so that both replicas get some


def _copy_home(src: Path, dst: Path) -> None:
    """The instance without the running server's state: files as they are, the DB through the backup
    API (consistent while the source server writes)."""
    skip = shutil.ignore_patterns("run", "server.*", "agent-vault.db*", "*.log", "cli")
    shutil.copytree(src, dst, ignore=skip)
    db = dst / "agent-vault.db"
    os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    with sqlite3.connect(src / "agent-vault.db") as s, sqlite3.connect(db) as d:
        s.backup(d)


def _server(name: str, home: Path, port: int, upstream_ca: str, log_path: Path) -> subprocess.Popen[Any]:
    cmd = [av_exe(), "server", "--port", "0", "--proxy-port", str(port), "--reuse-port"]
    cmd += ["--allow-net", "127.0.0.0/8", "--upstream-ca", upstream_ca, "--rate-limits", "off"]
    cmd += ["--no-step-up"]
    p = spawn(
        name, cmd, log_path, "proxy", env=av_env(home), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        line = read_line(p, 60)
    except BenchError as e:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"replica {name}: {e}; stderr: {' | '.join(tail)}") from e
    m = re.search(r"proxy=http://[\d.]+:(\d+)", line)
    if not m or int(m.group(1)) != port:
        raise BenchError(f"replica {name} printed an unexpected ready line: {line!r}")
    return p


def start(r: Any) -> None:
    """Add the column to `r.cols` (a phases.Run) once the agent-vault column passed its checks. A failure
    is recorded in `r.checks` and the bench carries on without the column."""
    from .phases import expect  # phases imports this module's caller; import at call time

    if "agent-vault" not in r.cols:
        return
    av = r.av
    try:
        port = free_port()
        procs = []
        for i, cpus in ((1, CORES["proxy"]), (2, CORES["other"])):
            home = r.work / f"avhome-r{i}"
            _copy_home(r.work / "avhome", home)
            p = _server(f"agent-vault-r{i}", home, port, r.pki["ca"], r.work / f"agent-vault-r{i}.log")
            pin_threads(p.pid, cpus)
            procs.append(p)
        col = Column(
            KEY,
            LABEL,
            BENCH_HOST,
            f"http://{av.token}:default@127.0.0.1:{port}",
            None,  # two processes: liveness and CPU are not per column here
            SCENARIOS,
            [r.pki["ca"], av.ca],
        )
        if not expect(r, f"{LABEL} /auth (injected)", col, "/auth", "auth=injected-ok", False):
            raise BenchError("injection check through the replicas failed")
        r.cols[KEY] = col
        r.ports["agent_vault_x2_proxy"] = port
        log(f"{LABEL}: two replicas on :{port} (pids {procs[0].pid}, {procs[1].pid})")
    except Exception as e:  # noqa: BLE001 - the column fails, the bench carries on
        r.checks[LABEL] = {"error": str(e)}
        print(f"{LABEL} column failed: {e}", flush=True)


def render(res: dict[str, Any]) -> list[str]:
    """The report section: req/s of one process vs two replicas on one port, and the ratio."""
    cols = res.get("columns", {})
    if KEY not in cols:
        err = res.get("checks", {}).get(LABEL, {}).get("error")
        return [f"## One host, two replicas on one port\n\n**not measured:** {err}\n"] if err else []
    out = [
        "## One host, two replicas on one port (`--reuse-port`)\n",
        "Replica 1 on the proxy core, replica 2 on the core shared with the load generator and upstreams.\n",
        f"| metric | agent-vault | {LABEL} | scaling |",
        "|---|---:|---:|---:|",
    ]
    from .common import SCENARIOS as LABELS

    for s in SCENARIOS:
        one = cols.get("agent-vault", {}).get(s, {}).get("rps")
        two = cols.get(KEY, {}).get(s, {}).get("rps")
        out.append(f"| {LABELS[s][0]}: req/s | {fmt(one)} | {fmt(two)} | {fmt(ratio(two, one), 2, ' ×')} |")
    out.append("")
    return out
