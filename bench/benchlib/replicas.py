"""The one-host scale-out column: "agent-vault x2 (reuse-port)", two replicas bound to ONE proxy port.

With PostgreSQL's server binaries on the machine (Debian's `postgresql`), the two replicas share one
throw-away PostgreSQL database (tests/helpers/pg.py starts it), as in a real deployment: `init` once,
replica 2 starts on an empty home. Without them, each replica runs on a copy of the agent-vault column's
home (SQLite backup API): two processes must never share one SQLite file, and nothing on the request path
reads the database, so the copies still measure what `--reuse-port` is about: the kernel spreading new
connections over two processes, one core each. The report names the backend used.

Pinning: replica 1 on the proxy core (like the single agent-vault column), replica 2 on the other core,
which it shares with the load generator and the upstreams -- on a 2-core machine the ratio therefore
understates what two free cores give. The report shows the ratio to the single-process column.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from .agentvault import api_call, av_env, av_exe
from .common import (
    BENCH_HOST,
    BENCH_SERVICE,
    CORES,
    OWNER_EMAIL,
    OWNER_PASSWORD,
    SECRET,
    BenchError,
    free_port,
    log,
    pin_threads,
    read_line,
    run,
    spawn,
)
from .loadgen import Column
from .report import fmt, ratio

KEY = "av-x2"
LABEL = "agent-vault x2 (reuse-port)"
SCENARIOS = ["ka16", "ka64", "nc16"]  # several connections, so that both replicas get some
BACKEND = "av-x2 backend"  # r.checks key naming the database the replicas used
MASTER = "bench-master-password-0001"
TESTS = Path(__file__).resolve().parents[2] / "tests"


def _copy_home(src: Path, dst: Path) -> None:
    """The instance without the running server's state: files as they are, the DB through the backup
    API (consistent while the source server writes)."""
    skip = shutil.ignore_patterns("run", "server.*", "agent-vault.db*", "*.log", "cli")
    shutil.copytree(src, dst, ignore=skip)
    db = dst / "agent-vault.db"
    os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
    with sqlite3.connect(src / "agent-vault.db") as s, sqlite3.connect(db) as d:
        s.backup(d)


def _postgres() -> str | None:
    """A fresh database on a throw-away PostgreSQL (stopped at exit), or None without the binaries."""
    sys.path.insert(0, str(TESTS))
    try:
        from helpers.pg import PgServer, missing_reason
    except ImportError:
        return None
    if missing_reason() is not None:
        return None
    server = PgServer.create()
    atexit.register(server.close)
    return str(server.new_database())


def _env(home: Path, url: str | None) -> dict[str, str]:
    env = av_env(home)
    if url is not None:
        env["DATABASE_URL"] = url
        env["AGENT_VAULT_MASTER_PASSWORD"] = MASTER
    return env


def _server(
    name: str, env: dict[str, str], port: int, upstream_ca: str, log_path: Path
) -> tuple[subprocess.Popen[Any], str]:
    cmd = [av_exe(), "server", "--port", "0", "--proxy-port", str(port), "--reuse-port"]
    cmd += ["--allow-net", "127.0.0.0/8", "--upstream-ca", upstream_ca, "--rate-limits", "off"]
    cmd += ["--no-step-up"]
    p = spawn(name, cmd, log_path, "proxy", env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = read_line(p, 60)
    except BenchError as e:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"replica {name}: {e}; stderr: {' | '.join(tail)}") from e
    m = re.search(r"api=(\S+) proxy=http://[\d.]+:(\d+)", line)
    if not m or int(m.group(2)) != port:
        raise BenchError(f"replica {name} printed an unexpected ready line: {line!r}")
    return p, m.group(1)


def _set_up_pg(r: Any, url: str, api: str) -> tuple[str, str]:
    """The bench service and an agent on the shared database, through replica 1: (token, CA file)."""
    tok = api_call(api, "POST", "/v1/auth/login", {"email": OWNER_EMAIL, "password": OWNER_PASSWORD})["token"]
    api_call(api, "PUT", "/v1/vaults/default/credentials/BENCH_TOKEN", {"value": SECRET}, token=tok)
    body = {"password": OWNER_PASSWORD, "service": BENCH_SERVICE}
    api_call(api, "POST", "/v1/vaults/default/services", body, token=tok)
    agent = {
        "name": "bench-x2",
        "password": OWNER_PASSWORD,
        "vaults": [{"vault": "default", "role": "proxy"}],
    }
    token = str(api_call(api, "POST", "/v1/agents", agent, token=tok)["token"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    ca = r.work / "av-x2-ca.pem"
    with opener.open(api + "/v1/mitm/ca.pem", timeout=30) as resp:
        ca.write_bytes(resp.read())
    return token, str(ca)


def start(r: Any) -> None:
    """Add the column to `r.cols` (a phases.Run) once the agent-vault column passed its checks. A failure
    is recorded in `r.checks` and the bench carries on without the column."""
    from .phases import expect  # phases imports this module's caller; import at call time

    if "agent-vault" not in r.cols:
        return
    av = r.av
    try:
        port = free_port()
        url = _postgres()
        r.checks[BACKEND] = "one PostgreSQL database" if url else "a copy of the instance each (SQLite)"
        token, ca, procs = av.token, av.ca, []
        for i, cpus in ((1, CORES["proxy"]), (2, CORES["other"])):
            home = r.work / f"avhome-r{i}"
            if url is None:
                _copy_home(r.work / "avhome", home)
            else:
                home.mkdir(mode=0o700)
                if i == 1:  # once per database
                    init = [av_exe(), "init", "--owner-email", OWNER_EMAIL, "--password-stdin", "--yes"]
                    run(init, timeout=120, env=_env(home, url), stdin=OWNER_PASSWORD + "\n")
            log_path = r.work / f"agent-vault-r{i}.log"
            p, api = _server(f"agent-vault-r{i}", _env(home, url), port, r.pki["ca"], log_path)
            pin_threads(p.pid, cpus)
            procs.append(p)
            if url is not None and i == 1:
                token, ca = _set_up_pg(r, url, api)
        col = Column(
            KEY,
            LABEL,
            BENCH_HOST,
            f"http://{token}:default@127.0.0.1:{port}",
            None,  # two processes: liveness and CPU are not per column here
            SCENARIOS,
            [r.pki["ca"], ca],
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
        f"Replicas on {res.get('checks', {}).get(BACKEND, '?')}; replica 1 on the proxy core, replica 2 on "
        "the core shared with the load generator and upstreams.\n",
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
