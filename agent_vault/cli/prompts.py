"""Reading secrets: hidden prompt, stdin, env or file — never argv."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from agent_vault.cli.output import out
from agent_vault.errors import InvalidRequest

TRIES = 3


def read_stdin_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise InvalidRequest("expected a line on standard input")
    return line.rstrip("\r\n")


def password(prompt: str, password_stdin: bool) -> str:
    """The user's password for step-up/login: first stdin line with --password-stdin, else a prompt."""
    if password_stdin:
        return read_stdin_line()
    if not sys.stdin.isatty():
        raise InvalidRequest("a password is required", hint="Pass --password-stdin and pipe it on stdin.")
    return getpass.getpass(prompt)


def new_password(prompt: str, *, what: str, minimum: int, differs_from: str | None = None) -> str:
    """A new password typed twice on the terminal, checked as it is typed: too short, equal to
    `differs_from` or a repeat that does not match is said (never the value) and asked again, up to
    TRIES times; then InvalidRequest naming the last problem. Without a terminal: InvalidRequest at once
    (callers check first and name their own flags; this is the backstop: never getpass without one)."""
    if not sys.stdin.isatty():  # getpass would warn, maybe echo, or read EOF and look like Ctrl-C
        raise InvalidRequest(f"no terminal to type the {what} on", hint="See --help for other sources.")
    problem = ""
    for _ in range(TRIES):
        value = getpass.getpass(prompt)
        if len(value) < minimum:
            problem = f"the {what} must be at least {minimum} characters"
        elif differs_from is not None and value == differs_from:
            problem = f"the {what} must differ from the login password"
        elif getpass.getpass("Repeat: ") != value:
            problem = f"the {what}s do not match"
        else:
            return value
        out.warn(f"{problem}; try again")
    raise InvalidRequest(f"{problem} ({TRIES} tries)", hint="Run 'agent-vault init' again.")


def secret_value(name: str, *, stdin: bool, from_env: str | None, from_file: Path | None) -> str:
    """A credential value from exactly one of: --stdin, --from-env VAR, --from-file PATH, a hidden prompt."""
    chosen = sum(bool(x) for x in (stdin, from_env, from_file))
    if chosen > 1:
        raise InvalidRequest("use only one of --stdin, --from-env and --from-file")
    if stdin:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
    elif from_env:
        if from_env not in os.environ:
            raise InvalidRequest(
                f"environment variable {from_env} is not set",
                hint=f"Export {from_env} first, or use --stdin or --from-file PATH.",
            )
        value = os.environ[from_env]
    elif from_file:
        try:
            value = from_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise InvalidRequest(f"cannot read {from_file}: {e.strerror or type(e).__name__}") from None
    elif sys.stdin.isatty():
        value = getpass.getpass(f"Value for {name}: ")
    else:
        raise InvalidRequest("no value given", hint="Use --stdin, --from-env VAR or --from-file PATH.")
    if not value:
        raise InvalidRequest("the credential value is empty")
    return value
