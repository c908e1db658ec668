"""Errors in words (issue #23): no exception class names, hints that fix the problem, enum values
case-insensitive with a "did you mean"."""

from __future__ import annotations

import pytest

from agent_vault.cli import G, main
from agent_vault.cli.output import out, words


def run(capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    out.json_mode = out.quiet = False
    G.addr = None
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


def test_connection_failure_in_words(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("pw\n"))
    code, _, err = run(
        capsys,
        "--addr",
        "http://127.0.0.1:9",
        "auth",
        "login",
        "--email",
        "a@example.com",
        "--password-stdin",
    )
    assert code == 1
    assert err == (
        "error: cannot reach the server at http://127.0.0.1:9 (Is the server running? Check with "
        "'agent-vault status'; start it with 'agent-vault server', or point --addr at it.)\n"
    )
    assert "ConnectError" not in err


def test_unknown_auth_type_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "vault", "service", "add", "svc", "--host", "a.example", "--auth-type", "baerer"
    )
    assert code == 2
    assert err == (
        "error: Invalid value for --auth-type: 'baerer' is not one of bearer, basic, api-key, custom, "
        "passthrough, oauth2-client-credentials, oauth2-refresh-token, token-exchange, aws-sigv4; "
        "did you mean bearer?\n"
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["vault", "settings", "--unmatched-policy", "tunel"],
            "error: Invalid value for --unmatched-policy: 'tunel' is not one of tunnel, passthrough, deny; "
            "did you mean tunnel?\n",
        ),
        (
            ["vault", "settings", "--enforcement", "dryrun"],
            "error: Invalid value for --enforcement: 'dryrun' is not one of enforce, dry-run, learn; "
            "did you mean dry-run?\n",
        ),
        (
            ["vault", "settings", "--rate-limits", "xyz"],
            "error: Invalid value for --rate-limits: 'xyz' is not one of default, strict, off, server\n",
        ),
    ],
)
def test_enum_options_list_the_valid_values(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    code, _, err = run(capsys, *args)
    assert (code, err) == (2, expected)


def test_enum_values_are_case_insensitive(capsys: pytest.CaptureFixture[str]) -> None:
    # `Bearer` is accepted: the command gets past parsing and stops at the (unreachable) server.
    code, _, err = run(
        capsys,
        "--addr",
        "http://127.0.0.1:9",
        "vault",
        "settings",
        "--enforcement",
        "DRY_RUN",
        "--unmatched-policy",
        "Deny",
    )
    assert code == 1 and "Invalid value" not in err


def test_words_never_python_literals() -> None:
    assert [words(True), words(False), words(None), words(["a", None])] == ["yes", "no", "none", "a, none"]


def test_fields_render_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    out.json_mode = out.quiet = False
    out.fields({"running": True, "logged_in_as": None, "proxy_enabled": False})
    text = capsys.readouterr().out
    assert text == "running: yes\nlogged in as: none\nproxy enabled: no\n"
    assert not any(w in text for w in ("True", "False", "None"))
