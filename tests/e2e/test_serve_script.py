"""README's first command, `bash scripts/serve`, on an uninitialised home without a terminal: it prints
the one-line `init --password-stdin` command to run and exits non-zero (it used to exit 0, so a wrapper
script took it for a started server). Run on a copy of the script beside an installed stand-in venv, so
the test needs no install and starts nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers.env import base_env

REPO = Path(__file__).resolve().parents[2]


def test_serve_without_a_terminal_on_a_new_home_says_what_to_run_and_fails(tmp_path: Path) -> None:
    tree = tmp_path / "checkout"
    (tree / "scripts").mkdir(parents=True)
    for name in ("scripts/serve", "scripts/lib.sh", "requirements.lock", "pyproject.toml"):
        shutil.copy(REPO / name, tree / name)
    bin_dir = tree / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    started = tmp_path / "server-started"
    stand_in = bin_dir / "agent-vault"  # would record a server start; must not be reached
    stand_in.write_text(
        f"#!/bin/sh\n[ \"$1\" = --version ] && echo 'agent-vault 0.0.0' && exit 0\ntouch {started}\n"
    )
    stand_in.chmod(0o755)
    os.utime(tree / "requirements.lock", (1, 1))
    os.utime(tree / "pyproject.toml", (1, 1))
    (tree / ".venv" / ".installed-from-lock").touch()  # installed: no pip run
    home = tmp_path / "new-home"
    cp = subprocess.run(
        ["bash", "scripts/serve"],
        cwd=tree,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=base_env(tmp_path, AGENT_VAULT_HOME=str(home)),
        timeout=60,
    )
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    assert "is not initialised and there is no terminal" in cp.stderr
    assert "agent-vault init --owner-email you@example.com --password-stdin" in cp.stderr
    assert not started.exists() and not home.exists()
