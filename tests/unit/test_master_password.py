"""master-password change/remove/set re-wrap the same DEK; values stay readable; wrong password refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.env import base_env

from agent_vault.config import Settings
from agent_vault.instance import init_instance, unlock

OLD, NEW = "master-password-old-1", "master-password-new-2"


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


def test_change_then_remove_then_set(tmp_path: Path) -> None:
    home = tmp_path / "h"
    s = Settings(home=home)
    init_instance(
        s,
        key_mode="password",
        owner_email="o@example.com",
        owner_password="owner-pass-1",
        master_password=OLD,
    )
    u = unlock(s, OLD)
    dek = u.dek
    u.store.close()
    bad = _cli(home, "change", "--password-stdin", stdin=f"wrong-password-xx\n{NEW}\n")
    assert bad.returncode == 1 and "wrong master password" in bad.stderr
    ok = _cli(home, "change", "--password-stdin", stdin=f"{OLD}\n{NEW}\n")
    assert ok.returncode == 0, ok.stderr
    u = unlock(s, NEW)
    assert u.dek == dek
    u.store.close()
    assert _cli(home, "remove", "--password-stdin", stdin=f"{NEW}\n").returncode == 1  # needs --yes
    assert _cli(home, "remove", "--yes", "--password-stdin", stdin=f"{NEW}\n").returncode == 0
    assert (home / "dek.key").stat().st_mode & 0o777 == 0o600
    assert unlock(s, None).dek == dek
    assert _cli(home, "set", "--password-stdin", stdin=f"{OLD}\n").returncode == 0
    assert not (home / "dek.key").exists()
    u = unlock(s, OLD)
    assert u.dek == dek
    u.store.close()
