"""`agent-vault init` on a real terminal (a pseudo-terminal): explains the two passwords, checks each one as
it is typed and asks again (three tries), refuses an initialised home before asking anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.env import base_env
from helpers.terminal import Term

from agent_vault.config import Settings
from agent_vault.home import Home
from agent_vault.instance import init_instance

LOGIN, MASTER = "login-pass-1", "master-password-1"
TIMEOUT_S = 20.0


def _init(tmp: Path, *args: str) -> Term:
    return Term(["init", *args], base_env(tmp, AGENT_VAULT_HOME=str(tmp / "agent-vault-home")))


def test_already_initialised_exits_before_any_prompt(tmp_path: Path) -> None:
    home = tmp_path / "agent-vault-home"
    init_instance(
        Settings(home=home),
        key_mode="passwordless",
        owner_email="o@example.com",
        owner_password=LOGIN,
        master_password=None,
    )
    rc, text = _init(tmp_path).finish()
    assert rc == 1
    assert "already initialised" in text and str(home) in text
    assert "Owner email" not in text and "password" not in text.lower()
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text


def test_explains_then_asks_again_for_a_short_master_password(tmp_path: Path) -> None:
    t = _init(tmp_path, "--owner-email", "o@example.com")
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
    assert Home(tmp_path / "agent-vault-home").initialised()


def test_three_mismatches_exit_with_one_line(tmp_path: Path) -> None:
    t = _init(tmp_path, "--owner-email", "o@example.com")
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
    assert not Home(tmp_path / "agent-vault-home").initialised()


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
    # --password-stdin reads every password from stdin (the variable is then ignored): `remove` without
    # it takes the current password from the variable
    remove = [*argv[:-2], "remove", "--yes"]
    from_env = subprocess.run(remove, input="", capture_output=True, text=True, env=env, timeout=60)
    assert from_env.returncode == 1 and "Check AGENT_VAULT_MASTER_PASSWORD." in from_env.stderr
