"""`agent-vault init` without a terminal (real CLI subprocesses, stdin /dev/null or a pipe): nothing is
ever prompted for (no getpass warning, no echo, no "aborted"/130); a missing source is one error line
naming the flags and variables to use; AGENT_VAULT_MASTER_PASSWORD supplies the master password (SPEC §10).
And `init --help` speaks to users, not about the function's return value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.env import base_env

from agent_vault.config import Settings
from agent_vault.instance import unlock

MASTER = "masterpass-abcdef"
LOGIN = "login-pass-1"


def _init(
    tmp: Path, *args: str, input: str | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    home = tmp / "home"
    cp = subprocess.run(
        [sys.executable, "-m", "agent_vault", "init", *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=base_env(tmp, AGENT_VAULT_HOME=str(home), **env),
        timeout=60,
    )
    return cp, home


def _one_error_line(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 1, cp
    assert cp.stdout == ""
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cp.stderr
    for noise in ("GetPassWarning", "Warning", "echoed", "aborted", "Traceback"):
        assert noise not in cp.stderr, cp.stderr
    return lines[0]


def test_master_password_from_env_but_no_login_password_source(tmp_path: Path) -> None:
    cp, home = _init(tmp_path, "--owner-email", "me@example.com", AGENT_VAULT_MASTER_PASSWORD=MASTER)
    line = _one_error_line(cp)
    assert "--password-stdin" in line and "no terminal" in line
    assert "AGENT_VAULT_MASTER_PASSWORD (" not in line  # it was given
    assert MASTER not in cp.stderr
    assert not (home / "instance.json").exists()


def test_every_missing_source_is_named_at_once(tmp_path: Path) -> None:
    line = _one_error_line(_init(tmp_path)[0])
    for what in ("--owner-email", "--password-stdin", "AGENT_VAULT_MASTER_PASSWORD"):
        assert what in line, line
    passwordless = _one_error_line(_init(tmp_path, "--key-mode", "passwordless")[0])
    assert "AGENT_VAULT_MASTER_PASSWORD" not in passwordless and "--password-stdin" in passwordless


def test_the_master_password_comes_from_the_environment(tmp_path: Path) -> None:
    cp, home = _init(
        tmp_path,
        "--owner-email",
        "me@example.com",
        "--password-stdin",
        input=LOGIN + "\n",
        AGENT_VAULT_MASTER_PASSWORD=MASTER,
    )
    assert cp.returncode == 0, cp.stderr
    assert "initialised" in cp.stdout and "start it with 'agent-vault server'" in cp.stdout
    assert json.loads((home / "instance.json").read_text())["key_mode"] == "password"
    unlock(Settings(home=home), MASTER).store.close()  # the env's password wraps the data key


def test_init_help_is_for_users(tmp_path: Path) -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "agent_vault", "init", "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=base_env(tmp_path, COLUMNS="200"),
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    text = " ".join(cp.stdout.split())
    assert "Returns" not in text and "need not ask for it again" not in text
    assert "Create the home" in text and "AGENT_VAULT_MASTER_PASSWORD" in text
