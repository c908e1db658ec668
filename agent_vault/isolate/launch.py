"""Start CMD in the sandbox and wait for it, with `vault run`'s signal and exit-code contract.

Handshake: `inner` (in the sandbox) sends its listening sockets over a Unix socket pair; the kernel adds
its credentials (SO_PASSCRED), whose pid is translated into our PID namespace, so we hold a pidfd of CMD
itself (inner execs CMD in place) and forward signals to it race-free. bwrap and its init are started
with the forwarded signals ignored (inner restores them for CMD). CMD has no controlling terminal
(`--new-session`), so the terminal's SIGINT, SIGQUIT and SIGWINCH reach the wrapper and are forwarded;
Ctrl-Z (SIGTSTP) stops CMD with SIGSTOP (its process group is orphaned: the kernel would drop a SIGTSTP)
and, once every thread of CMD is stopped (a signal to another process takes effect asynchronously),
the wrapper itself, so the shell sees the job stopped only when CMD is; SIGCONT (`fg`) is forwarded.
The main thread waits in `childwait.wait_forwarding`, never in `waitpid` (signals the relay's threads take).
Exit: CMD's code, 128+N when killed by signal N (bwrap reports it so), 125 when the sandbox did not start.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent_vault.childwait import wait_forwarding
from agent_vault.isolate.relay import Relay, Target

WRAPPER_FAILED = 125
HANDSHAKE_TIMEOUT_S = 30.0
FORWARDED = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGTSTP,
    signal.SIGCONT,
)
INNER = Path(__file__).with_name("inner.py")
STOP_WAIT_S = 0.5  # how long Ctrl-Z waits for CMD's threads to stop before the wrapper stops anyway
_UCRED = struct.Struct("iII")  # pid, uid, gid


@dataclass(frozen=True)
class Route:
    """Listen on 127.0.0.1:`inside_port` in the sandbox; relay to `target` outside."""

    inside_port: int
    target: Target


def _handshake(
    sock: socket.socket, proc: subprocess.Popen[bytes], n: int
) -> tuple[list[socket.socket], int] | None:
    """The listening sockets and CMD's pid (ours) from inner's one message, within the deadline; None
    if the sandbox exited or stalled first (bwrap or inner printed the reason)."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (proc.poll() is not None and not select.select([sock], [], [], 0)[0]):
            return None
        if select.select([sock], [], [], min(left, 0.2))[0]:
            break
    msg, anc, _flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(n * 4) + socket.CMSG_SPACE(_UCRED.size))
    fds = array.array("i")
    pid = 0
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _UCRED.unpack(data[: _UCRED.size])[0]
    socks = [socket.socket(fileno=fd) for fd in fds]
    if msg != b"ready" or len(socks) != n or pid <= 0:
        for s in socks:
            s.close()
        return None
    return socks, pid


def _all_stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (state T/t in /proc) or gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rpartition(")")[2].split()[0] for t in tasks]
    except (OSError, IndexError):
        return True
    return all(st in ("T", "t", "Z", "X") for st in states)  # stopped, or exited meanwhile


def _wait_stopped(pid: int) -> None:
    """Until `pid` is stopped, at most STOP_WAIT_S: SIGSTOP reaches each thread on its own schedule."""
    deadline = time.monotonic() + STOP_WAIT_S
    while not _all_stopped(pid) and time.monotonic() < deadline:
        time.sleep(0.001)


def run_sandboxed(prefix: list[str], argv: list[str], env: dict[str, str], routes: list[Route]) -> int:
    """Run `prefix + [python, inner, ...] + argv`; relay `routes` while it runs; the exit code."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    inner = [sys.executable, "-I", str(INNER), str(theirs.fileno()), *(str(r.inside_port) for r in routes)]
    pidfd: list[int] = []
    cmd_pid: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not pidfd:
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd[0], signal.SIGSTOP if signum == signal.SIGTSTP else signum)
        if signum == signal.SIGTSTP:
            _wait_stopped(cmd_pid[0])
            os.kill(os.getpid(), signal.SIGSTOP)

    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in FORWARDED}
    relay: Relay | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            proc = subprocess.Popen([*prefix, *inner, "--", *argv], env=env, pass_fds=(theirs.fileno(),))
        except OSError as e:
            print(f"error: --isolate: cannot start {prefix[0]} ({e.strerror})", file=sys.stderr)
            return WRAPPER_FAILED
        finally:
            theirs.close()
            for s in FORWARDED:
                signal.signal(s, forward)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        got = _handshake(ours, proc, len(routes))
        if got is None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            return WRAPPER_FAILED
        listeners, pid = got
        with contextlib.suppress(ProcessLookupError):  # CMD may already be gone
            pidfd.append(os.pidfd_open(pid))
            cmd_pid.append(pid)
        relay = Relay().start([(s, r.target) for s, r in zip(listeners, routes, strict=True)])
        for signum in pending if pidfd else ():
            forward(signum, None)
        rc = wait_forwarding(proc)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted: take the sandbox down with us
            proc.kill()
            proc.wait()
        for s, h in saved.items():  # first: `forward` must not meet a closed pidfd
            signal.signal(s, h)
        if relay is not None:
            relay.stop()
        for fd in pidfd:
            os.close(fd)
        ours.close()
    return 128 - rc if rc < 0 else rc
