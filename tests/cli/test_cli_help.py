"""Help that reads well at 80 columns (issue #23): every command's `--help` walked from the real tree.

No line over 80 columns, no option name cut, no `--no-no-x` / `--no-x` twins of plain flags, no bare
type labels (`<bool>`, `<str>`), every option described, the global options on the top-level help,
and `agent-vault completion SHELL` printing a script that calls back `agent-vault`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from agent_vault.cli import G, build_command, main
from agent_vault.cli.output import out

UNDESCRIBED_ELSEWHERE: set[tuple[str, str]] = set()  # every option of every command is described


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not sub.hidden:
            yield from _walk(sub, (*path, name))


COMMANDS = list(_walk(build_command()))


def _help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *path: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    out.json_mode = out.quiet = False
    G.addr = None
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    cap = capsys.readouterr()
    assert e.value.code in (0, None), cap.err
    return cap.out


def test_the_tree_is_walked() -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "logs", "vault service add", "completion"} <= names
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "agent-vault")
def test_help_fits_80_columns_and_reads_well(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: tuple[str, ...]
) -> None:
    text = _help(capsys, monkeypatch, *path)
    assert text.strip()
    for line in text.splitlines():
        assert len(line) <= 80, line
    assert "--no-no-" not in text
    assert "…" not in text, "an option name or word was cut"
    bare = re.findall(r"<(?:bool|str|int|float|path|text|list\[[a-z]+\]|int range|float range)>", text)
    assert not bare, bare
    assert "[default: no-" not in text and "[default: False]" not in text


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "agent-vault" for p, _ in COMMANDS])
def test_every_option_is_described_and_flags_have_no_negative_twin(path: tuple[str, ...], cmd: Any) -> None:
    for p in cmd.params:
        if p.param_type_name != "option" or p.hidden:
            continue
        name = max(p.opts, key=len)
        if (" ".join(path), name) not in UNDESCRIBED_ELSEWHERE:
            assert p.help, f"{' '.join(path)} {name} has no help"
        if p.is_flag and p.default is False:
            assert not p.secondary_opts, f"{' '.join(path)} {name} has {p.secondary_opts}"


def test_top_level_help_documents_the_global_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(capsys, monkeypatch)
    for opt in (
        "--addr",
        "--home",
        "--json",
        "--quiet",
        "--no-color",
        "AGENT_VAULT_ADDR",
        "AGENT_VAULT_HOME",
    ):
        assert opt in text, opt
    assert "completion" in text


def test_plain_flags_are_spelled_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _help(capsys, monkeypatch, "server")
    assert "--no-step-up" in text and "--no-no-step-up" not in text and "--no-disable-proxy" not in text
    text = _help(capsys, monkeypatch, "init")
    assert "--password-stdin" in text and "--no-password-stdin" not in text


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script(capsys: pytest.CaptureFixture[str], shell: str) -> None:
    out.json_mode = out.quiet = False
    with pytest.raises(SystemExit) as e:
        main(["completion", shell])
    cap = capsys.readouterr()
    assert e.value.code == 0, cap.err
    assert "agent-vault" in cap.out and "_AGENT_VAULT_COMPLETE" in cap.out
    assert cap.err == ""


def test_completion_unknown_shell_is_one_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    out.json_mode = out.quiet = False
    with pytest.raises(SystemExit) as e:
        main(["completion", "bsh"])
    cap = capsys.readouterr()
    assert e.value.code == 2
    assert (
        cap.err == "error: Invalid value for SHELL: 'bsh' is not one of bash, zsh, fish; did you mean bash?\n"
    )
