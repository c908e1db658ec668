"""The server process: ready line, clean shutdown, fatal bind errors, master password, files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from helpers.env import base_env
from helpers.server import MASTER_PASSWORD, ServerProc
from helpers.terminal import Term


def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_exits_zero_frees_ports_and_wipes_run_dir(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca)
    srv.init()
    srv.start()
    api_port = int(srv.api.rsplit(":", 1)[1])
    run_dir = srv.home / "run"
    assert not (run_dir / "mitmproxy-ca.pem").exists()  # the engine's CA key file is gone once loaded
    assert run_dir.stat().st_mode & 0o777 == 0o700
    assert srv.stop() == 0
    assert _port_free(api_port) and _port_free(srv.proxy_port)
    assert not run_dir.exists()
    assert "Traceback" not in srv.stderr_text()


def test_port_in_use_is_fatal_with_one_line(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca)
    srv.init()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        for flag in ("--port", "--proxy-port"):
            other = "--proxy-port" if flag == "--port" else "--port"
            cp = _run(["server", flag, str(port), other, "0"], srv.env)
            assert cp.returncode == 1, cp
            assert cp.stdout == ""  # never "ready"
            lines = [x for x in cp.stderr.splitlines() if x.startswith("error:")]
            assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], cp.stderr
            assert "Traceback" not in cp.stderr


def test_password_mode_needs_the_right_master_password(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")
    srv.init()
    env = {**srv.env, "AGENT_VAULT_MASTER_PASSWORD": "this-is-the-wrong-one"}
    cp = _run(["server", "--port", "0", "--proxy-port", "0"], env)
    assert cp.returncode == 1 and "wrong master password" in cp.stderr and "Traceback" not in cp.stderr
    cp = _run(["server", "--port", "0", "--proxy-port", "0"], srv.env)  # no password, no TTY
    assert cp.returncode == 1 and "master password" in cp.stderr
    srv.start()  # the right one (from the env, then removed from the process environment)
    with srv.http() as c:
        assert c.get("/v1/status").json()["key_mode"] == "password"
    assert srv.stop() == 0
    assert MASTER_PASSWORD not in srv.stderr_text()


def test_a_mistyped_master_password_is_asked_again_three_times_in_all(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    """SPEC §4.1: `wrong master password` (exit 1; 3 prompt attempts), at a real terminal; foreground
    and `--detach` (which checks the password before it leaves the terminal)."""
    srv = ServerProc(tmp_path, upstream_ca, key_mode="password")
    srv.init()
    args = ["server", "--port", "0", "--proxy-port", "0"]
    t = Term(args, srv.env)
    seen = ""
    for _ in range(3):
        seen += t.expect("Master password:")
        t.send("not-the-master-password")
    rc, out = t.finish()
    assert seen.count("wrong master password, try again") == 2, seen  # before the 2nd and 3rd prompt
    assert rc == 1 and "error: wrong master password" in out and "try again" not in out, out
    assert "Traceback" not in seen + out
    t = Term([*args, "--detach"], srv.env, timeout=60)
    t.expect("Master password:")
    t.send("still-not-the-master-password")
    t.expect("wrong master password, try again")
    t.expect("Master password:")
    t.send(MASTER_PASSWORD)  # the second attempt is right: the server starts in the background
    rc, out = t.finish()
    assert rc == 0, out
    cp = _run(["server", "stop"], srv.env)
    assert cp.returncode == 0, cp


def test_uninitialised_home_without_tty(tmp_path: Path) -> None:
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "empty"))
    cp = _run(["server", "--port", "0", "--proxy-port", "0"], env)
    assert cp.returncode == 1
    line = cp.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "is not initialised yet" in line
    assert "agent-vault init --owner-email you@example.com --password-stdin" in line


def test_unreachable_postgres_is_one_line_without_the_password(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    srv = ServerProc(tmp_path, upstream_ca)
    srv.init()
    cp = _run(["server", "--database-url", "postgresql://av:s3cret-pw@127.0.0.1:1/x"], srv.env)
    assert cp.returncode == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1 and "s3cret-pw" not in cp.stderr + cp.stdout, cp.stderr


@pytest.mark.parametrize("args", [["server", "--port", "notanumber"], ["server", "--bogus-flag"], ["nope"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    cp = _run(args, base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "h")))
    assert cp.returncode == 2 and "Traceback" not in cp.stderr


def test_unreadable_home_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(blocker / "home"))
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_vault",
            "init",
            "--key-mode",
            "passwordless",
            "--owner-email",
            "o@example.com",
            "--password-stdin",
            "--yes",
        ],
        input="owner-pass-1\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (
        cp.returncode == 1
        and cp.stderr.startswith("error: cannot use directory")
        and "Traceback" not in cp.stderr
    )
