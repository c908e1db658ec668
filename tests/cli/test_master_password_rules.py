"""SPEC §4.2 at `master-password change|set`, not only at `init`: the master password must differ from
the owner's login password. A refusal is one error line, exit 1 (as the other validation errors of the
command), and changes nothing. The real CLI, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.env import base_env

from agent_vault.config import Settings
from agent_vault.instance import init_instance, unlock

LOGIN, MASTER = "owner-login-pass-1", "master-password-old-1"
SAME = "error: the master password must differ from the owner's login password"


def _cli(home: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = base_env(home.parent, AGENT_VAULT_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", "master-password", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _init(home: Path, key_mode: str) -> bytes:
    s = Settings(home=home)
    master = None if key_mode == "passwordless" else MASTER
    init_instance(
        s, key_mode=key_mode, owner_email="o@example.com", owner_password=LOGIN, master_password=master
    )
    u = unlock(s, master)
    u.store.close()
    return u.dek


def test_change_refuses_the_owners_login_password(tmp_path: Path) -> None:
    home = tmp_path / "h"
    dek = _init(home, "password")
    cp = _cli(home, "change", "--password-stdin", stdin=f"{MASTER}\n{LOGIN}\n")
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.startswith(SAME) and len(cp.stderr.strip().splitlines()) == 1
    assert LOGIN not in cp.stderr + cp.stdout
    u = unlock(Settings(home=home), MASTER)  # nothing changed: the old master password still opens it
    assert u.dek == dek and u.key_mode == "password"
    u.store.close()


def test_set_refuses_the_owners_login_password(tmp_path: Path) -> None:
    home = tmp_path / "h"
    dek = _init(home, "passwordless")
    cp = _cli(home, "set", "--password-stdin", stdin=f"{LOGIN}\n")
    assert cp.returncode == 1 and cp.stderr.startswith(SAME), cp.stderr
    assert (home / "dek.key").exists()  # still passwordless, its key file untouched
    assert json.loads((home / "instance.json").read_text())["key_mode"] == "passwordless"
    u = unlock(Settings(home=home), None)
    assert u.dek == dek and u.key_mode == "passwordless"
    u.store.close()
    ok = _cli(home, "set", "--password-stdin", stdin="another-master-pass-2\n")  # any other one is taken
    assert ok.returncode == 0, ok.stderr
