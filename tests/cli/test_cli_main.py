"""The CLI entry point in-process: global options anywhere, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_vault.cli import G, main
from agent_vault.cli.output import out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    out.json_mode = out.quiet = False  # main() applies global flags to process-wide state
    G.addr = None
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


@pytest.mark.parametrize(
    "argv",
    [["--json", "vault", "current"], ["vault", "current", "--json"], ["vault", "--json", "current"]],
)
def test_json_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(capsys, *argv, "--vault", "team-a")
    assert code == 0
    assert json.loads(stdout) == {"vault": "team-a", "source": "--vault"}


@pytest.mark.parametrize("where", ["before", "after"])
def test_home_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "other-home"
    (home / "cli").mkdir(parents=True)
    (home / "cli" / "context").write_text("ctx-vault\n")
    argv = (
        ["--home", str(home), "vault", "current"]
        if where == "before"
        else ["vault", "current", f"--home={home}"]
    )
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and stdout.startswith("ctx-vault (from ")


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(capsys, "vault", "current", "--no-such-flag")
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_missing_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "vault", "credential", "set")
    assert code == 2 and stderr.startswith("error: ")


def test_bad_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "agent", "rotate", "bot-one", "--grace", "soon")
    assert code == 2 and "invalid duration" in stderr


def test_server_unreachable_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(capsys, "--addr", "http://127.0.0.1:9", "vault", "list")
    assert code == 1 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1


def test_not_logged_in(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "--addr", "http://127.0.0.1:9", "vault", "credential", "list")
    assert code == 1 and "not logged in" in stderr


def test_catalog_and_guide_are_local(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "catalog", "list", "--json")
    assert code == 0
    ids = [s["id"] for s in json.loads(stdout)["services"]]
    assert "github" in ids and "anthropic" in ids
    code, stdout, _ = run(capsys, "catalog", "show", "anthropic")
    assert code == 0 and "x-api-key" in stdout and "--from-catalog anthropic" in stdout
    code, _, stderr = run(capsys, "catalog", "show", "nope")
    assert code == 1 and "no catalog template" in stderr
    code, stdout, _ = run(capsys, "agent-guide")
    assert code == 0 and stdout.startswith("# Working behind agent-vault")


def test_credential_value_never_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _stderr = run(capsys, "vault", "credential", "set", "API_KEY", "sk-value")
    assert code == 2  # no positional value is accepted


def test_reveal_needs_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "vault", "credential", "get", "API_KEY", "--reveal")
    assert code == 1 and "interactive terminal" in stderr
    code, _, stderr = run(capsys, "vault", "credential", "get", "API_KEY")
    assert code == 1 and "write-only" in stderr


def test_destructive_without_terminal_needs_yes(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "agent", "delete", "bot-one")
    assert code == 1 and "--yes" in stderr


def test_ca_path_missing(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "ca", "path", "--bundle")
    assert code == 1 and "ca-bundle.pem does not exist" in stderr and "ca fetch" in stderr


def test_run_wrapper_failures_exit_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--addr", "http://127.0.0.1:9", "run", "--", "true")[0] == 125  # not logged in
    assert run(capsys, "run")[0] == 125  # no command
    assert run(capsys, "run", "--ttl", "soon", "--", "true")[0] == 125
    assert run(capsys, "vault", "run", "--policy", "open", "--", "true")[0] == 125
    assert run(capsys, "vault", "run", "--placeholder", "lower", "--", "true")[0] == 125
    assert run(capsys, "vault", "run", "--bogus", "--", "true")[0] == 125
    assert run(capsys, "vault", "run", "--ttl")[0] == 125  # an option without its value (click's own check)
    assert run(capsys, "run", "--ttl")[0] == 125
    assert run(capsys, "vault", "list", "--bogus")[0] == 2  # elsewhere a usage error stays 2
    code, _, stderr = run(capsys, "run", "--", "definitely-not-a-command-xyz")
    assert code == 127 and "command not found" in stderr


def test_an_unexpected_error_is_one_line_without_a_class_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a command is one line pointing at AGENT_VAULT_DEBUG: no traceback, no class name."""
    import agent_vault.cli.vault as vault_cmd

    def boom(*_a: object, **_k: object) -> object:
        raise KeyError("private detail")

    monkeypatch.setattr(vault_cmd, "resolve_vault", boom)
    code, stdout, stderr = run(capsys, "vault", "current")
    assert code == 1 and stdout == ""
    assert stderr == "error: unexpected internal error; rerun with AGENT_VAULT_DEBUG=1 for the details\n"
