"""The server's lifecycle: one server per home, --detach / status / server stop, no silent stops.

Real processes only: `agent-vault server` (foreground and detached), `status`, `server stop`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.cli_fixtures import run_cli
from helpers.server import MASTER_PASSWORD, ServerProc
from helpers.wait import wait_until

PORTS = ("--port", "0", "--proxy-port", "0")
RUNNING = re.compile(
    r"^agent-vault server running: pid (\d+), api (http://127\.0\.0\.1:\d+), "
    r"proxy (http://127\.0\.0\.1:\d+), log (\S+)$"
)


_run = run_cli


def _errors(cp: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in cp.stderr.splitlines() if x.startswith("error:")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie (exited, not yet reaped by its new parent) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


def _port_free(url: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        except OSError:
            return False
    return True


@pytest.fixture
def detached() -> Iterator[list[int]]:
    """Pids of detached servers a test started: SIGKILLed at the end if the test left one running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_second_server_on_the_same_home_names_the_first_and_never_asks(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    with ServerProc(tmp_path, upstream_ca, key_mode="password") as srv:
        assert srv.proc is not None
        first = srv.proc.pid
        with_pw = {**srv.env, "AGENT_VAULT_MASTER_PASSWORD": MASTER_PASSWORD}
        # with a password (it would unlock and start a second server on other ports) and without one
        # (it would ask for it): the same one line naming the running server, before any password
        for env in (with_pw, srv.env):
            cp = _run(["server", *PORTS], env)
            assert cp.returncode == 1, cp
            assert cp.stdout == ""
            lines = _errors(cp)
            assert len(lines) == 1, cp.stderr
            assert f"already running for {srv.home}" in lines[0]
            assert f"pid {first}, api {srv.api}, proxy {srv.proxy}" in lines[0], lines[0]
            assert "master password" not in cp.stderr.lower() and "Traceback" not in cp.stderr
        cp = _run(["server", "--detach", *PORTS], with_pw)  # --detach refuses the same way
        assert cp.returncode == 1 and f"pid {first}" in cp.stderr, cp
        with srv.http() as c:  # the first one is untouched
            assert c.get("/v1/status").status_code == 200
        assert srv.stop() == 0


@pytest.mark.parametrize(
    ("key_mode", "source"), [("password", "env"), ("password", "stdin"), ("passwordless", None)]
)
def test_detach_status_stop_round_trip(
    tmp_path: Path, upstream_ca: trustme.CA, detached: list[int], key_mode: str, source: str | None
) -> None:
    srv = ServerProc(tmp_path, upstream_ca, key_mode=key_mode)
    srv.init()
    env, stdin = dict(srv.env), None
    args = ["server", "--detach", *PORTS, "--allow-net", "127.0.0.0/8"]
    if source == "env":
        env["AGENT_VAULT_MASTER_PASSWORD"] = MASTER_PASSWORD
    elif source == "stdin":
        args.append("--password-stdin")
        stdin = MASTER_PASSWORD + "\n"
    cp = _run(args, env, input=stdin)
    assert cp.returncode == 0, cp
    # SPEC §4.2: the passwordless warning at every start, on the terminal too (not only in server.log)
    warning = f"WARNING: passwordless mode — anyone who can read {srv.home / 'dek.key'} can decrypt"
    assert (warning in cp.stderr) == (key_mode == "passwordless"), cp.stderr
    lines = cp.stdout.splitlines()
    assert len(lines) == 1, cp.stdout
    m = RUNNING.match(lines[0])
    assert m, lines[0]
    pid, api, proxy, log = int(m[1]), m[2], m[3], Path(m[4])
    detached.append(pid)
    assert log == srv.home / "server.log" and log.stat().st_mode & 0o777 == 0o600
    assert _alive(pid) and os.getsid(pid) == pid  # its own session: no terminal, no job control
    r = httpx.get(api + "/v1/status", trust_env=False)
    assert r.status_code == 200 and r.json()["key_mode"] == key_mode

    # the master password reached it through a pipe: not on its command line, not in its environment
    assert MASTER_PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert MASTER_PASSWORD.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert b"--password-stdin" in Path(f"/proc/{pid}/cmdline").read_bytes() or key_mode == "passwordless"

    st = _run(["status"], srv.env)
    assert st.returncode == 0, st
    assert f"running for {srv.home}: pid {pid}, api {api}, proxy {proxy}" in st.stdout
    assert f"key mode: {key_mode}" in st.stdout and "True" not in st.stdout and "None" not in st.stdout

    cp = _run(["server", "stop"], srv.env)
    assert cp.returncode == 0, cp
    assert cp.stdout.strip() == f"agent-vault server stopped (pid {pid})"
    assert not _alive(pid)
    assert _port_free(api) and _port_free(proxy)
    assert not (srv.home / "server.json").exists()

    text = log.read_text()
    assert f"agent-vault ready api={api} proxy={proxy}" in text and "shutting down" in text
    assert MASTER_PASSWORD not in text and "Traceback" not in text

    st = _run(["status"], srv.env)
    assert st.returncode == 1 and _errors(st) == [
        f"error: no agent-vault server is running for {srv.home} "
        "(Start one with 'agent-vault server --detach'.)"
    ], st
    cp = _run(["server", "stop"], srv.env)
    assert cp.returncode == 1 and _errors(cp) == [
        f"error: no agent-vault server is running for {srv.home} "
        "(Check --home / AGENT_VAULT_HOME; 'agent-vault status' shows what runs for a home.)"
    ], cp


def test_detach_failure_prints_the_servers_error_line(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")
    srv.init()
    cp = _run(["server", "--detach", *PORTS], srv.env)  # no password source: refused before the child
    assert cp.returncode == 1 and len(_errors(cp)) == 1, cp
    assert "AGENT_VAULT_MASTER_PASSWORD" in cp.stderr and "--password-stdin" in cp.stderr
    env = {**srv.env, "AGENT_VAULT_MASTER_PASSWORD": "this-is-the-wrong-one"}
    cp = _run(["server", "--detach", *PORTS], env)
    assert cp.returncode == 1 and cp.stdout == "", cp
    lines = _errors(cp)
    assert len(lines) == 1 and "the server did not start: wrong master password" in lines[0], cp.stderr
    assert str(srv.home / "server.log") in lines[0]
    assert "this-is-the-wrong-one" not in (srv.home / "server.log").read_text()


def test_sigkilled_server_does_not_block_the_next_start(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca)
    srv.init()
    srv.start()
    assert srv.proc is not None
    state = srv.home / "server.json"
    assert f'"pid": {srv.proc.pid}' in state.read_text()
    srv.kill9()
    assert state.exists()  # left behind: stale now that its lock is free
    st = _run(["status"], srv.env)
    assert st.returncode == 1 and "no agent-vault server is running" in st.stderr, st
    srv.start()  # not blocked by the stale lock/state
    try:
        assert srv.proc is not None
        assert f'"pid": {srv.proc.pid}' in state.read_text()
        st = _run(["status"], srv.env)
        assert st.returncode == 0 and f"pid {srv.proc.pid}, api {srv.api}" in st.stdout, st
    finally:
        assert srv.stop() == 0
    assert not state.exists()


NO_SOURCE = (
    "error: the master password is required and there is no terminal to ask for it (Set "
    "AGENT_VAULT_MASTER_PASSWORD or pass --password-stdin; to run it in the background: "
    "'agent-vault server --detach' with one of them)"
)


def test_no_terminal_and_no_password_source_exits_at_once(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")
    srv.init()
    cp = _run(["server", *PORTS], srv.env, timeout=30)
    assert cp.returncode == 1 and cp.stdout == "", cp
    assert _errors(cp) == [NO_SOURCE], cp.stderr


# `agent-vault server &` in an interactive shell: stdin is the terminal, but the server is a background
# job; reading the terminal would stop it (SIGTTIN/SIGTTOU) and it would wait there, silently, forever.
_BACKGROUND_JOB = r"""
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first terminal becomes its controlling one
p = subprocess.Popen(sys.argv[2:], stdin=fd, process_group=0)  # own process group: a background job
print(p.pid, flush=True)
sys.exit(p.wait())
"""


def test_background_job_on_a_terminal_exits_instead_of_stopping(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")
    srv.init()
    master, slave = os.openpty()
    tty = os.ttyname(slave)
    os.close(slave)
    cmd = [sys.executable, "-c", _BACKGROUND_JOB, tty, sys.executable, "-m", "agent_vault", "server", *PORTS]
    job = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=srv.env,
        start_new_session=True,
    )
    assert job.stdout is not None
    server_pid = int(job.stdout.readline())
    try:
        wait_until(lambda: job.poll() is not None, "the background server to exit", timeout=30)
    finally:
        if _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
        job.wait(timeout=10)
        os.close(master)
    assert job.stderr is not None
    stderr = job.stderr.read()
    job.stdout.close()
    job.stderr.close()
    assert job.returncode == 1, stderr
    assert [x for x in stderr.splitlines() if x.startswith("error:")] == [NO_SOURCE], stderr


# The first `agent-vault server` on a terminal runs `init` (prompts) and then serves. Its stdout must carry
# the ready line alone (SPEC §2.1: scripts read it), so init's own output goes to stderr. The session
# leader below makes the pseudo-terminal its controlling terminal and runs the server as its foreground
# job with stdin (and stderr, the prompts) on the terminal and stdout on a pipe.
_FOREGROUND_JOB = r"""
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDWR)
sys.exit(subprocess.Popen(sys.argv[2:], stdin=fd, stderr=fd).wait())
"""


def test_first_start_on_a_terminal_keeps_stdout_for_the_ready_line(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    import select
    import time

    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")  # never initialised
    env = {k: v for k, v in srv.env.items() if k != "AGENT_VAULT_MASTER_PASSWORD"}
    master, slave = os.openpty()  # the slave stays open here: reading the master never sees EIO early
    tty = os.ttyname(slave)
    cmd = [sys.executable, "-c", _FOREGROUND_JOB, tty, sys.executable, "-m", "agent_vault", "server", *PORTS]
    job = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    login, master_pw = "first-login-password-1", MASTER_PASSWORD
    answers = [
        (b"Owner email", b"owner@example.com\n"),
        (b"Login password", login.encode() + b"\n"),
        (b"Repeat", login.encode() + b"\n"),
        (b"Master password (", master_pw.encode() + b"\n"),
        (b"Repeat", master_pw.encode() + b"\n"),
    ]
    seen = since = b""
    try:
        assert job.stdout is not None
        end = time.monotonic() + 60
        stdout = b""  # read as it comes (a prompt sent to stdout has no newline to wait for)
        while time.monotonic() < end and b"\n" not in stdout:
            if answers and answers[0][0] in since:
                os.write(master, answers.pop(0)[1])
                since = b""
            r, _, _ = select.select([master, job.stdout], [], [], 0.2)
            if master in r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: nothing has the terminal open any more
                    break
                seen += chunk
                since += chunk
            if job.stdout in r:
                stdout += os.read(job.stdout.fileno(), 4096) or b"\n"
        assert stdout.startswith(b"agent-vault ready api=http://"), (stdout, seen)
        assert not answers, seen
        assert b"initialised" in seen  # init's report went to the terminal (stderr), not to stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGTERM)  # the job's own session: the leader and the server
        job.wait(timeout=30)
        rest = job.stdout.read() if job.stdout else b""
        os.close(master)
        os.close(slave)
    assert stdout.count(b"\n") == 1 and rest == b"", (stdout, rest)  # nothing else ever reached stdout
