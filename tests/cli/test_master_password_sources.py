"""`master-password change|set|remove`: where the passwords come from, and when the command refuses.

With --password-stdin every password the command needs is read from stdin (AGENT_VAULT_MASTER_PASSWORD
is then not read), and a stdin with another number of lines is refused: taking a password from the wrong
line would leave the instance under a password the user does not know. The command refuses while a
server runs for the home (like `migrate-db`). The real CLI, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import base_env
from helpers.pg import PgServer

from agent_vault.config import Settings
from agent_vault.errors import WrongMasterPassword
from agent_vault.home import Home
from agent_vault.instance import init_instance, unlock
from agent_vault.lifecycle import ServerLock

LOGIN, OLD, NEW = "owner-login-pass-1", "master-password-old-1", "master-password-new-2"
KEYRING_BACKEND = "keyrings.alt.file.PlaintextKeyring"


def _cli(home: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", "master-password", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=base_env(home.parent, AGENT_VAULT_HOME=str(home), **env),
        timeout=60,
    )


def _init(home: Path, key_mode: str = "password") -> bytes:
    s = Settings(home=home)
    master = None if key_mode == "passwordless" else OLD
    init_instance(
        s, key_mode=key_mode, owner_email="o@example.com", owner_password=LOGIN, master_password=master
    )
    u = unlock(s, master)
    u.store.close()
    return u.dek


def _opens_with(home: Path, master: str | None) -> bool:
    try:
        u = unlock(Settings(home=home), master)
    except WrongMasterPassword:
        return False
    u.store.close()
    return True


def _one_error_line(cp: subprocess.CompletedProcess[str], *secrets: str) -> str:
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), cp.stderr
    assert "Traceback" not in cp.stderr
    for secret in secrets:
        assert secret not in cp.stdout + cp.stderr
    return lines[0]


def test_change_reads_both_passwords_from_stdin_even_with_the_variable_set(tmp_path: Path) -> None:
    home = tmp_path / "h"
    _init(home)
    # the QA repro: the variable holds the current password, stdin both; the new one must win
    cp = _cli(home, "change", "--password-stdin", stdin=f"{OLD}\n{NEW}\n", AGENT_VAULT_MASTER_PASSWORD=OLD)
    assert cp.returncode == 0, cp.stderr
    assert _opens_with(home, NEW) and not _opens_with(home, OLD)


@pytest.mark.parametrize(
    ("command", "key_mode", "stdin", "reads"),
    [
        ("change", "password", f"{NEW}\n", "reads 2"),  # the variable would have been the current one
        ("change", "password", f"{OLD}\n{NEW}\nextra-line-3\n", "reads 2"),
        ("set", "password", f"{NEW}\n", "reads 2"),  # a protected instance: current, then new
        ("set", "passwordless", f"{OLD}\n{NEW}\n", "reads 1"),  # was: the first line became the password
        ("remove", "password", f"{OLD}\n{NEW}\n", "reads 1"),
    ],
)
def test_another_number_of_stdin_lines_is_refused_and_changes_nothing(
    tmp_path: Path, command: str, key_mode: str, stdin: str, reads: str
) -> None:
    home = tmp_path / "h"
    dek = _init(home, key_mode)
    extra = ["--yes"] if command == "remove" else []
    cp = _cli(home, command, *extra, "--password-stdin", stdin=stdin, AGENT_VAULT_MASTER_PASSWORD=OLD)
    line = _one_error_line(cp, OLD, NEW)
    assert reads in line and "AGENT_VAULT_MASTER_PASSWORD is not read with --password-stdin" in line
    u = unlock(Settings(home=home), None if key_mode == "passwordless" else OLD)  # unchanged
    assert u.dek == dek and u.key_mode == key_mode
    u.store.close()


def test_set_on_a_protected_instance_and_remove_read_stdin_not_the_variable(tmp_path: Path) -> None:
    home = tmp_path / "h"
    _init(home)
    wrong = "not-the-master-password"
    cp = _cli(home, "set", "--password-stdin", stdin=f"{OLD}\n{NEW}\n", AGENT_VAULT_MASTER_PASSWORD=wrong)
    assert cp.returncode == 0, cp.stderr
    assert _opens_with(home, NEW)
    cp = _cli(
        home, "remove", "--yes", "--password-stdin", stdin=f"{NEW}\n", AGENT_VAULT_MASTER_PASSWORD=wrong
    )
    assert cp.returncode == 0, cp.stderr
    assert json.loads((home / "instance.json").read_text())["key_mode"] == "passwordless"


def test_remove_prints_the_passwordless_warning(tmp_path: Path) -> None:
    home = tmp_path / "h"
    _init(home)
    cp = _cli(home, "remove", "--yes", "--password-stdin", stdin=f"{OLD}\n")
    assert cp.returncode == 0, cp.stderr
    warning = f"WARNING: passwordless mode — anyone who can read {home / 'dek.key'} can decrypt"
    assert warning in cp.stderr and warning not in cp.stdout


@pytest.mark.parametrize(
    ("command", "stdin"),
    [("change", f"{OLD}\n{NEW}\n"), ("set", f"{OLD}\n{NEW}\n"), ("remove", f"{OLD}\n")],
)
def test_refused_while_the_homes_server_runs(tmp_path: Path, command: str, stdin: str) -> None:
    home = tmp_path / "h"
    dek = _init(home)
    extra = ["--yes"] if command == "remove" else []
    with ServerLock(Home(home)) as lock:  # what a running server holds (and publishes once ready)
        lock.write_state("http://127.0.0.1:16011", "http://127.0.0.1:16012", "password")
        cp = _cli(home, command, *extra, "--password-stdin", stdin=stdin)
    line = _one_error_line(cp, OLD, NEW)
    assert "server is running for" in line and "api http://127.0.0.1:16011" in line
    assert "agent-vault server stop" in line
    u = unlock(Settings(home=home), OLD)  # nothing changed
    assert u.dek == dek and u.key_mode == "password"
    u.store.close()
    assert _cli(home, command, *extra, "--password-stdin", stdin=stdin).returncode == 0  # stopped: it runs


def test_change_keyring_switches_to_key_mode_keyring(tmp_path: Path) -> None:
    home = tmp_path / "h"
    _init(home)
    env = {
        "AGENT_VAULT_KEYRING": "1",
        "PYTHON_KEYRING_BACKEND": KEYRING_BACKEND,
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    cp = _cli(home, "change", "--keyring", "--password-stdin", stdin=f"{OLD}\n{NEW}\n", **env)
    assert cp.returncode == 0, cp.stderr
    assert "stored in the OS keyring" in cp.stderr and "key mode is now keyring" in cp.stdout
    instance_id = json.loads((home / "instance.json").read_text())["instance_id"]
    code = "import keyring, sys; print(keyring.get_password('agent-vault', sys.argv[1]) or '')"
    got = subprocess.run(
        [sys.executable, "-c", code, f"master-password:{instance_id}"],
        env=base_env(tmp_path, **env),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert got.stdout.strip() == NEW


def test_set_help_says_what_it_does_on_every_mode(tmp_path: Path) -> None:
    cp = _cli(tmp_path / "h", "set", "--help")
    text = " ".join(cp.stdout.split())
    assert cp.returncode == 0 and "replaces the password like" in text and "--keyring" in text


def test_with_postgresql_refused_while_this_homes_replica_runs(tmp_path: Path, pg: PgServer) -> None:
    url = pg.new_database()
    home = tmp_path / "replica-home"
    s = Settings(home=home, database_url=url)
    init_instance(
        s, key_mode="password", owner_email="o@example.com", owner_password=LOGIN, master_password=OLD
    )
    with ServerLock(Home(home)) as lock:
        lock.write_state("http://127.0.0.1:16013", "http://127.0.0.1:16014", "password")
        cp = _cli(home, "change", "--password-stdin", stdin=f"{OLD}\n{NEW}\n", DATABASE_URL=url)
    line = _one_error_line(cp, OLD, NEW)
    assert "server is running for" in line and "stop every replica" in line
    cp = _cli(home, "change", "--password-stdin", stdin=f"{OLD}\n{NEW}\n", DATABASE_URL=url)
    assert cp.returncode == 0, cp.stderr
    u = unlock(s, NEW)
    assert u.key_mode == "password"
    u.store.close()
