"""The parts of `vault run --isolate` below the CLI: what the sandbox hides, its bwrap command line, the
probe (with a real bwrap and with a bwrap that fails as it does without user namespaces), the relay's
bounds, and the launcher's refusal when the sandbox cannot listen."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_vault.cli.isolate import inside_ports, plan
from agent_vault.isolate import launch
from agent_vault.isolate.launch import WRAPPER_FAILED, Route, run_sandboxed
from agent_vault.isolate.relay import Relay
from agent_vault.isolate.sandbox import (
    BASE_ARGS,
    IsolationUnavailable,
    _dbus_path,
    bwrap_args,
    hidden_paths,
    probe,
)


def _unix_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def test_hidden_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    av = tmp_path / "av-home"
    (av / "certs").mkdir(parents=True)
    (home / ".agent-vault").mkdir(parents=True)
    (home / ".local/share/python_keyring").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    bus, other_bus = _unix_socket(run / "bus"), _unix_socket(tmp_path / "dbus-sock")
    try:
        env = {
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(run),
            "DBUS_SESSION_BUS_ADDRESS": f"unix:abstract=/x;unix:path={tmp_path / 'dbus-sock'},guid=1",
        }
        h = hidden_paths(av, av / "certs", env)
    finally:
        bus.close()
        other_bus.close()
    assert h.dirs == (av, home / ".agent-vault", home / ".local/share/python_keyring")  # no keyrings/
    assert h.others == (run / "bus", tmp_path / "dbus-sock")  # no run/keyring: it does not exist
    assert h.keep == ((av / "certs", av / "sandbox-certs"),)


def test_hidden_paths_resolve_links_and_deduplicate(tmp_path: Path) -> None:
    real = tmp_path / "real-home"
    (real / "certs").mkdir(parents=True)
    user_home = tmp_path / "u"
    user_home.mkdir()
    (user_home / ".agent-vault").symlink_to(real)
    h = hidden_paths(user_home / ".agent-vault", user_home / ".agent-vault/certs", {"HOME": str(user_home)})
    assert h.dirs == (real,) and h.others == ()
    assert h.keep == ((real / "certs", real / "sandbox-certs"),)


def test_dbus_path() -> None:
    assert _dbus_path("unix:path=/run/user/1/bus") == Path("/run/user/1/bus")
    assert _dbus_path("unix:abstract=/tmp/dbus-x,guid=9") is None
    assert _dbus_path("") is None


def test_bwrap_args_order(tmp_path: Path) -> None:
    h = hidden_paths(tmp_path, tmp_path / "certs", {"HOME": str(tmp_path / "nohome")})
    assert h.keep == ()  # no certs directory: nothing to show
    args = bwrap_args("/usr/bin/bwrap", h)
    assert args[: 1 + len(BASE_ARGS)] == ["/usr/bin/bwrap", *BASE_ARGS]
    assert args[1 + len(BASE_ARGS) :] == ["--perms", "0700", "--tmpfs", str(tmp_path), "--"]
    assert "--unshare-net" in BASE_ARGS and "--unshare-pid" in BASE_ARGS and "--new-session" in BASE_ARGS
    assert BASE_ARGS.index("--dev-bind") < BASE_ARGS.index("--proc")  # /proc replaced after the bind


def test_inside_ports_and_plan() -> None:
    assert inside_ports(14321, 14322) == (14321, 14322)
    assert inside_ports(443, 80) == (14321, 14322)  # privileged ports stand in
    assert inside_ports(14322, 80) == (14322, 14323)
    p = plan("http://10.1.2.3:8080", "10.1.2.3", 9090)
    assert (p.addr, p.proxy_host, p.proxy_port) == ("http://127.0.0.1:8080", "127.0.0.1", 9090)
    routes = [(r.inside_port, r.target) for r in p.routes]
    assert routes == [(9090, ("10.1.2.3", 9090)), (8080, ("10.1.2.3", 8080))]


def test_probe_real_and_refusals(tmp_path: Path) -> None:
    assert probe(os.environ.get("PATH")).endswith("/bwrap")
    with pytest.raises(IsolationUnavailable) as missing:
        probe(str(tmp_path))
    assert "needs bubblewrap" in missing.value.message and "without --isolate" in missing.value.hint
    fake = tmp_path / "bwrap"  # what bwrap prints where unprivileged user namespaces are off
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(IsolationUnavailable) as denied:
        probe(str(tmp_path))
    assert denied.value.message == (
        "--isolate cannot create namespaces here (bwrap: setting up uid map: Permission denied)"
    )
    assert "max_user_namespaces" in denied.value.hint and denied.value.code == "isolation_unavailable"


def test_the_launcher_refuses_when_the_sandbox_cannot_listen(capfd: pytest.CaptureFixture[str]) -> None:
    """Port 80 needs a capability the sandbox does not have: 125, one line, the command never runs."""
    prefix = bwrap_args(shutil.which("bwrap") or "bwrap", hidden_paths(Path("/nonexistent"), Path("/x"), {}))
    argv = [sys.executable, "-c", "print('ran')"]
    rc = run_sandboxed(prefix, argv, dict(os.environ), [Route(80, ("127.0.0.1", 9))])
    out, err = capfd.readouterr()
    assert rc == WRAPPER_FAILED and "ran" not in out
    assert err.strip() == "error: --isolate: cannot listen on 127.0.0.1:80 in the sandbox (Permission denied)"


@pytest.fixture
def echo_target() -> Iterator[tuple[str, int]]:
    """A TCP server that echoes until EOF, then closes."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[:2]
    stop.set()
    t.join(timeout=5)
    srv.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def test_relay_pipes_and_half_closes(echo_target: tuple[str, int]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    relay = Relay().start([(listener, echo_target)])
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=10) as c:
            payload = os.urandom(300_000)
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # half-close: the answer still comes back
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == payload
    finally:
        relay.stop()


def test_relay_bounds_connections_and_closes_on_refused_targets(echo_target: tuple[str, int]) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    dead_addr = dead.getsockname()[:2]
    dead.close()  # nothing listens there any more
    ok, refused = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    relay = Relay(max_connections=2).start([(ok, echo_target), (refused, dead_addr)])
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            c = socket.create_connection(ok.getsockname()[:2], timeout=10)
            c.sendall(b"x")
            assert c.recv(1) == b"x"  # open and relayed
            held.append(c)
        extra = socket.create_connection(ok.getsockname()[:2], timeout=10)
        held.append(extra)
        assert extra.recv(1) == b""  # over the bound: closed at once
        assert relay.refused == 1
        for c in held[:2]:
            c.close()
        held.clear()
        with socket.create_connection(refused.getsockname()[:2], timeout=10) as c:
            assert c.recv(1) == b""  # the target refused: so is the client
    finally:
        for c in held:
            c.close()
        relay.stop()


def test_relay_stop_with_open_connections_is_silent(
    echo_target: tuple[str, int], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The child's last connections may still be open when it exits: stopping closes them, printing nothing
    (asyncio 3.12.1 prints a traceback for a cancelled connection callback unless the relay absorbs it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    relay = Relay().start([(listener, echo_target)])
    clients = [socket.create_connection(listener.getsockname()[:2], timeout=10) for _ in range(4)]
    try:
        for c in clients:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
        relay.stop()
        for c in clients:
            assert c.recv(1) == b""
    finally:
        for c in clients:
            c.close()
    _out, err = capfd.readouterr()
    assert err == "" and relay.errors == 0
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []  # stderr outside pytest


def test_ctrl_z_waits_until_every_thread_of_the_command_is_stopped() -> None:
    """SIGSTOP to another process takes effect thread by thread; the wrapper stops itself (the shell
    then shows the job stopped) only once CMD's threads all are, so a stopped job does no more work."""
    script = (
        "import threading, time\n"
        "def spin():\n"
        "    while True:\n"
        "        pass\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        time.sleep(0.3)
        assert not launch._all_stopped(proc.pid)  # running: a busy thread and a sleeping one
        os.kill(proc.pid, signal.SIGSTOP)
        launch._wait_stopped(proc.pid)
        assert launch._all_stopped(proc.pid)
        assert len(os.listdir(f"/proc/{proc.pid}/task")) == 2
    finally:
        proc.kill()
        proc.wait()
    assert launch._all_stopped(proc.pid)  # gone counts as stopped: Ctrl-Z never waits for a dead CMD
