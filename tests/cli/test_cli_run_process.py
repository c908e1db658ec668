"""`vault run` process handling without a server: command lookup, exit codes, signals, renewal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.env import base_env
from helpers.wait import wait_until

from agent_vault import childwait
from agent_vault.cli.run import NOT_EXECUTABLE, NOT_FOUND, Renewer, check_command, spawn
from agent_vault.errors import AgentVaultError


def test_check_command(tmp_path: Path) -> None:
    assert check_command("sh", os.environ.get("PATH")) is None
    assert check_command("no-such-command-xyz", os.environ.get("PATH")) == NOT_FOUND
    assert check_command(str(tmp_path / "missing"), None) == NOT_FOUND
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert check_command(str(script), None) == NOT_EXECUTABLE
    assert check_command("tool", str(tmp_path)) == NOT_EXECUTABLE
    assert check_command(str(tmp_path), None) == NOT_EXECUTABLE
    script.chmod(0o755)
    assert check_command("tool", str(tmp_path)) is None


def test_spawn_exit_codes(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert spawn(["sh", "-c", "exit 7"], env) == 7
    assert spawn(["sh", "-c", "kill -TERM $$"], env) == 128 + signal.SIGTERM
    assert spawn(["sh", "-c", "kill -KILL $$"], env) == 128 + signal.SIGKILL


def test_spawn_restores_signal_handlers(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    spawn(["true"], base_env(tmp_path))
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigterm_to_the_wrapper_is_forwarded(tmp_path: Path) -> None:
    up = tmp_path / "child-up"
    failed: list[AssertionError] = []

    def term_once_the_child_runs() -> None:
        try:
            wait_until(up.exists, "the child to start", timeout=30)
        except AssertionError as e:  # no signal then: the child exits 0 after its 20 s and the test fails
            failed.append(e)
            return
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=term_once_the_child_runs)
    sender.start()
    # scenario: the child must still be running when the wrapper is signalled (20 s is never reached)
    child = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(20)"
    try:
        code = spawn([sys.executable, "-c", child, str(up)], base_env(tmp_path))
    finally:
        sender.join(35)
    assert not failed, failed
    assert code == 128 + signal.SIGTERM


def test_sigint_to_the_wrapper_is_ignored_child_keeps_default(tmp_path: Path) -> None:
    # The wrapper ignores SIGINT; the child (which exec resets to default handling) dies from it.
    # scenario: the child stays alive 0.3 s after signalling the wrapper, so the wrapper had time to die of it
    script = "import os, signal, time; os.kill(os.getppid(), signal.SIGINT); time.sleep(0.3); print('alive')"
    env = base_env(tmp_path)
    assert spawn([sys.executable, "-c", script], env) == 0
    assert spawn([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"], env) in (
        128 + signal.SIGINT,
        130,
        1,
    )


def test_renewer_renews_at_half_ttl_and_stops() -> None:
    calls: list[float] = []
    created = time.monotonic()
    r = Renewer(lambda: calls.append(time.monotonic()), ttl=0.4, max_sleep=0.05).start()
    wait_until(lambda: len(calls) >= 3, "three renewals", timeout=10)
    r.stop()
    n = len(calls)
    # every ~0.2 s: each renewal only once half the TTL (0.2 s) of the previous deadline has passed
    gaps = [b - a for a, b in zip([created, *calls], calls, strict=False)]
    assert all(g >= 0.199 for g in gaps), gaps  # (float rounding of deadline - ttl / 2)
    # a window must pass to show nothing happens: longer than the renewal interval (0.2 s)
    time.sleep(0.3)
    assert len(calls) == n  # stopped


def test_renewer_retries_after_failure() -> None:
    attempts: list[int] = []

    def renew() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise AgentVaultError("server down")

    r = Renewer(renew, ttl=0.2, max_sleep=0.05).start()
    wait_until(lambda: r.renewals >= 1, "a renewal after the failed attempt", timeout=10)
    r.stop()
    assert len(attempts) >= 2 and r.renewals >= 1


def test_renewer_sleeps_in_bounded_steps() -> None:
    now = [0.0]
    r = Renewer(lambda: None, ttl=86400, max_sleep=60, clock=lambda: now[0])
    assert r.deadline - r.ttl / 2 == 43200  # first renewal when half the TTL is left
    r.start()
    r.stop()  # returns promptly although the renewal is hours away
    assert r.renewals == 0


def _signalling_child(delay: float, after: float, code: int) -> subprocess.Popen[bytes]:
    """A child that sends us SIGUSR1 after `delay` s, then exits with `code` `after` s later."""
    script = (
        f"import os, signal, time; time.sleep({delay}); os.kill({os.getpid()}, signal.SIGUSR1); "
        f"time.sleep({after}); raise SystemExit({code})"
    )
    return subprocess.Popen([sys.executable, "-c", script])


def test_wait_forwarding_runs_a_handler_another_thread_took_at_once() -> None:
    """The `fg` bug: a signal the kernel hands to another thread must still reach its Python handler
    while the child runs (asleep in waitpid, the main thread ran it only once the child had exited)."""
    seen: list[float] = []
    old = signal.signal(signal.SIGUSR1, lambda _s, _f: seen.append(time.monotonic()))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)  # does not block SIGUSR1...
    other.start()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # ...and the main thread does
    try:
        start = time.monotonic()
        proc = _signalling_child(0.2, 3.0, 5)
        assert childwait.wait_forwarding(proc) == 5
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGUSR1, old)
        stop.set()
    assert len(seen) == 1 and seen[0] - start < 2.0, "the handler waited for the child to exit"


def test_wait_forwarding_without_pidfd_still_runs_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no pidfd (not Linux), the wait polls: the handler still runs while the child
    lives, and the exit code comes back."""

    def no_pidfd(_pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(childwait.os, "pidfd_open", no_pidfd)
    seen: list[float] = []
    old = signal.signal(signal.SIGUSR1, lambda _s, _f: seen.append(time.monotonic()))
    try:
        start = time.monotonic()
        assert childwait.wait_forwarding(_signalling_child(0.2, 3.0, 7)) == 7
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert len(seen) == 1 and seen[0] - start < 2.0
