"""`agent-vault init` on a real terminal (a pseudo-terminal): explains the two passwords, checks each one as
it is typed and asks again (three tries), refuses an initialised home before asking anything."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from helpers.env import base_env

from agent_vault.config import Settings
from agent_vault.home import Home
from agent_vault.instance import init_instance

LOGIN, MASTER = "login-pass-1", "master-password-1"
TIMEOUT_S = 20.0


class Term:
    """The CLI on the slave side of a pty pair; we drive the master side."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.home = tmp / "agent-vault-home"
        self.fd, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_vault", "init", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=base_env(tmp, AGENT_VAULT_HOME=str(self.home), NO_COLOR="1"),
            start_new_session=True,
            close_fds=True,
        )
        os.close(slave)
        self.text = ""

    def _read(self, deadline: float) -> bool:
        """Read what is available; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.text += data.decode(errors="replace").replace("\r\n", "\n")
        return True

    def expect(self, needle: str) -> str:
        """Wait for `needle` in the output after what was already consumed; returns the output up to it."""
        deadline = time.monotonic() + TIMEOUT_S
        while needle not in self.text:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"{needle!r} not in output: {self.text!r}")
        before, _, self.text = self.text.partition(needle)
        return before

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self) -> tuple[int, str]:
        """Read to the end of the output; the exit code and the output not consumed yet."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and self._read(deadline):
            pass
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # still waiting for input: fail instead of hanging
            self.proc.wait()
            raise AssertionError(f"init did not exit; output: {self.text!r}") from None
        finally:
            os.close(self.fd)
        return rc, self.text


def test_already_initialised_exits_before_any_prompt(tmp_path: Path) -> None:
    home = tmp_path / "agent-vault-home"
    init_instance(
        Settings(home=home),
        key_mode="passwordless",
        owner_email="o@example.com",
        owner_password=LOGIN,
        master_password=None,
    )
    rc, text = Term(tmp_path).finish()
    assert rc == 1
    assert "already initialised" in text and str(home) in text
    assert "Owner email" not in text and "password" not in text.lower()
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text


def test_explains_then_asks_again_for_a_short_master_password(tmp_path: Path) -> None:
    t = Term(tmp_path, "--owner-email", "o@example.com")
    intro = t.expect("Login password (8+ characters): ")
    assert "login password" in intro.lower() and "log in" in intro.lower()
    assert "master password" in intro.lower() and "cannot be recovered" in intro.lower()
    assert "12" in intro
    t.send(LOGIN)
    t.expect("Repeat: ")
    t.send(LOGIN)
    t.expect("Master password (12+ characters): ")
    t.send("short-1")
    retry = t.expect("Master password (12+ characters): ")
    assert "at least 12 characters" in retry and "short-1" not in retry
    t.send(MASTER)
    t.expect("Repeat: ")
    t.send(MASTER)
    rc, text = t.finish()
    assert rc == 0, text
    assert "initialised" in text and "Traceback" not in text
    assert Home(t.home).initialised()


def test_three_mismatches_exit_with_one_line(tmp_path: Path) -> None:
    t = Term(tmp_path, "--owner-email", "o@example.com")
    for _ in range(3):
        t.expect("Login password (8+ characters): ")
        t.send(LOGIN)
        t.expect("Repeat: ")
        t.send("something-else-1")
    rc, text = t.finish()
    assert rc == 1
    errors = [x for x in text.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "do not match" in errors[0], text
    assert "Check the command's arguments" not in text
    assert LOGIN not in text and "something-else-1" not in text
    assert "Master password" not in text
    assert not Home(t.home).initialised()


def test_wrong_master_password_hint_names_its_source(tmp_path: Path) -> None:
    home = tmp_path / "agent-vault-home"
    init_instance(
        Settings(home=home),
        key_mode="password",
        owner_email="o@example.com",
        owner_password=LOGIN,
        master_password=MASTER,
    )
    argv = [sys.executable, "-m", "agent_vault", "master-password", "change", "--password-stdin"]
    typed = subprocess.run(
        argv,
        input="wrong-password-xx\nnew-master-pw-2\n",
        capture_output=True,
        text=True,
        env=base_env(tmp_path),
        timeout=60,
    )
    assert typed.returncode == 1 and "Type the master password chosen at init" in typed.stderr
    assert "AGENT_VAULT_MASTER_PASSWORD" not in typed.stderr
    env = base_env(tmp_path, AGENT_VAULT_MASTER_PASSWORD="wrong-password-xx")
    from_env = subprocess.run(
        argv, input="new-master-pw-2\n", capture_output=True, text=True, env=env, timeout=60
    )
    assert from_env.returncode == 1 and "Check AGENT_VAULT_MASTER_PASSWORD." in from_env.stderr
