"""Shared pieces of the benchmark harness: constants, process control, pinning, /proc readers."""

from __future__ import annotations

import contextlib
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
VENV = REPO / ".venv"
LOADGEN_SRC = BENCH / "loadgen"
LOADGEN_BIN = BENCH / "bin" / "loadgen"
RESULTS = BENCH / "results"

HOSTS_LINE = "127.0.0.1 bench.local tunnel.local"
BENCH_HOST = "bench.local"  # listed as a service in agent-vault: MITM + injection
TUNNEL_HOST = "tunnel.local"  # not listed anywhere: agent-vault tunnels it (no MITM)
OWNER_EMAIL = "bench@example.com"
OWNER_PASSWORD = "owner-password-123"
SECRET = "sk-bench-secret-value"

# PERF-NOTES.md anchors (2-vCPU EPYC, unloaded): used only to rescale absolute targets in the notes.
ANCHOR_MITM_CPU_US = 1200
ANCHOR_MITM_ADDED_MS = 1.3
ANCHOR_DIRECT_KA1_RPS = 31800

BENCH_SERVICE = {"name": "bench", "host": BENCH_HOST, "auth": {"type": "bearer", "token": "BENCH_TOKEN"}}

SCENARIOS = {  # key -> (label, concurrency, new_conn)
    "ka1": ("keep-alive c=1", 1, False),
    "ka16": ("keep-alive c=16", 16, False),
    "ka64": ("keep-alive c=64", 64, False),
    "nc1": ("new connection c=1", 1, True),
    "nc16": ("new connection c=16", 16, True),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


@dataclass
class Procs:
    """Every process the bench starts; stopped by PID at exit, never by name."""

    items: list[tuple[str, subprocess.Popen[Any]]] = field(default_factory=list)

    def add(self, name: str, p: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.items.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if p.poll() is not None:
            return
        try:
            p.send_signal(sig)
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for _name, p in reversed(self.items):
            try:
                self.stop(p)
            except Exception as e:  # noqa: BLE001 - best effort cleanup, reported
                print(f"warning: could not stop pid {p.pid}: {e}", file=sys.stderr)
        self.items.clear()


PROCS = Procs()
CORES: dict[str, set[int] | None] = {"proxy": None, "other": None}


def proxy_core_name() -> str:
    cpus = CORES["proxy"]
    return f"cpu{min(cpus)}" if cpus else "cpu0"


def machine_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU busy over `seconds` (before we start anything: other tenants)."""

    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:8]) - v[3] - v[4], sum(v[:8])

    b0, t0 = busy()
    time.sleep(seconds)
    b1, t1 = busy()
    ncpu = os.cpu_count() or 1
    return round((b1 - b0) / max(1, t1 - t0) * ncpu, 2)


def affinity(which: str):  # type: ignore[no-untyped-def]
    cpus = CORES[which]
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def pin_threads(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of pid (threads created later inherit from their creator)."""
    if cpus is None:
        return
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # thread exited meanwhile
            os.sched_setaffinity(int(tid), cpus)


def read_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def spawn(name: str, cmd: list[str], log_path: Path | None, cpus: str, **kw: Any) -> subprocess.Popen[Any]:
    """Start a tracked child on the given core set, stderr to log_path (or discarded)."""
    if log_path is None:
        return PROCS.add(
            name, subprocess.Popen(cmd, stderr=subprocess.DEVNULL, preexec_fn=affinity(cpus), **kw)
        )
    with open(log_path, "w") as err:
        return PROCS.add(name, subprocess.Popen(cmd, stderr=err, preexec_fn=affinity(cpus), **kw))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def read_line(p: subprocess.Popen[Any], timeout: float) -> str:
    """One line from p.stdout within timeout (bytes pipe), or raise."""
    assert p.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = p.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if r:
            ch = os.read(fd, 1)
            if not ch:
                raise BenchError(f"stdout closed (exit {p.poll()}) before a full line; got {buf!r}")
            if ch == b"\n":
                return buf.decode(errors="replace")
            buf += ch
        elif p.poll() is not None:
            raise BenchError(f"process exited with {p.returncode}; partial stdout {buf!r}")
    raise BenchError(f"no line on stdout within {timeout}s; partial {buf!r}")


def run(
    cmd: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`{' '.join(cmd)}` timed out after {timeout}s") from e
    if check and cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip().splitlines()[-5:]
        raise BenchError(f"`{' '.join(cmd)}` exited {cp.returncode}: {' | '.join(tail)}")
    return cp


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "arch": platform.machine(),
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        import mitmproxy.version

        info["mitmproxy"] = mitmproxy.version.VERSION
    except ImportError:
        pass
    for name, cmd in (("nginx", ["nginx", "-v"]), ("go", ["go", "version"])):
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            info[name] = (cp.stdout + cp.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return info
