"""Shell completion end to end: the script `agent-vault completion SHELL` prints is loaded and its
callback (`_AGENT_VAULT_COMPLETE=complete_SHELL agent-vault`) answers with candidates.

Bash is driven for real (`bash -c` evals the script and calls the registered completion function);
zsh and fish are not installed here, so their callbacks are driven with the variables their scripts
set (`_TYPER_COMPLETE_ARGS`, plus `_TYPER_COMPLETE_FISH_ACTION` for fish). Each runs the installed
`agent-vault` in a fresh process: the completion classes are process-global state in click.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import base_env

BIN = Path(sys.executable).parent
EXE = BIN / "agent-vault"
VAR = "_AGENT_VAULT_COMPLETE"

pytestmark = pytest.mark.skipif(not EXE.exists(), reason="agent-vault is not installed next to python")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """base_env with the venv's bin first on PATH: the scripts call back `agent-vault` by name."""
    return base_env(tmp_path, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH') or os.defpath}", **extra)


def _script(tmp_path: Path, shell: str) -> str:
    done = subprocess.run(
        [str(EXE), "completion", shell], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


BASH = r"""
eval "$(agent-vault completion bash)" || exit 3
spec=$(complete -p agent-vault) || exit 4
func=${spec#*-F }
func=${func%% *}
read -r -a COMP_WORDS <<< "$LINE"
[[ $LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE=$LINE
COMP_POINT=${#LINE}
COMPREPLY=()
"$func" agent-vault "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}" || exit 5
printf 'func=%s\n' "$func"
printf 'reply=%s\n' "${COMPREPLY[@]}"
"""


def _bash_complete(tmp_path: Path, line: str) -> list[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", BASH],
        env=_env(tmp_path, LINE=line),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "not supported" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert "func=_agent_vault_completion" in lines, done.stdout
    return [x.removeprefix("reply=") for x in lines if x.startswith("reply=") and x != "reply="]


def test_bash_completes_a_top_level_command(tmp_path: Path) -> None:
    assert _bash_complete(tmp_path, "agent-vault vau") == ["vault"]


def test_bash_completes_a_subcommand(tmp_path: Path) -> None:
    reply = _bash_complete(tmp_path, "agent-vault vault r")
    assert "run" in reply
    assert all(r.startswith("r") for r in reply), reply


def test_bash_completes_after_a_global_option(tmp_path: Path) -> None:
    assert "vault" in _bash_complete(tmp_path, "agent-vault --json va")


def _callback(tmp_path: Path, shell: str, line: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = _env(tmp_path, **{VAR: f"complete_{shell}", "_TYPER_COMPLETE_ARGS": line}, **extra)
    return subprocess.run([str(EXE)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_script_sends_what_the_callback_reads(tmp_path: Path, shell: str) -> None:
    script = _script(tmp_path, shell)
    assert f"{VAR}=complete_{shell}" in script
    assert "_TYPER_COMPLETE_ARGS=" in script


def test_zsh_callback(tmp_path: Path) -> None:
    done = _callback(tmp_path, "zsh", "agent-vault vau")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("_arguments ") and '"vault":' in done.stdout, done.stdout
    done = _callback(tmp_path, "zsh", "agent-vault vault r")
    assert done.returncode == 0, done.stderr
    assert '"run":' in done.stdout and '"vault":' not in done.stdout, done.stdout


def test_fish_callback(tmp_path: Path) -> None:
    done = _callback(tmp_path, "fish", "agent-vault vau", _TYPER_COMPLETE_FISH_ACTION="get-args")
    assert done.returncode == 0, done.stderr
    assert [x.split("\t")[0] for x in done.stdout.splitlines()] == ["vault"], done.stdout
    done = _callback(tmp_path, "fish", "agent-vault vault r", _TYPER_COMPLETE_FISH_ACTION="get-args")
    assert done.returncode == 0, done.stderr
    assert "run" in [x.split("\t")[0] for x in done.stdout.splitlines()], done.stdout
    # the script's --condition: exit 0 when there are candidates (so fish offers them, not files)
    done = _callback(tmp_path, "fish", "agent-vault vau", _TYPER_COMPLETE_FISH_ACTION="is-args")
    assert done.returncode == 0, done.stderr


def test_no_hidden_installer_options(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(EXE), "--help"], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--install-completion" not in done.stdout and "--show-completion" not in done.stdout
