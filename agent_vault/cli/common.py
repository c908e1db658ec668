"""Shared by the command modules: the API client for this invocation, vault resolution, step-up, confirmation.

Vault resolution (SPEC §10): `--vault` > AGENT_VAULT_VAULT > `.agent-vault.toml` (current directory or the
nearest parent, `vault = "name"`) > `cli/context` (written by `vault use`) > `default`.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer

from agent_vault.cli import G
from agent_vault.cli.client import Client
from agent_vault.cli.prompts import password
from agent_vault.errors import AgentVaultError, InvalidRequest
from agent_vault.home import ensure_dir, write_private

PROJECT_FILE = ".agent-vault.toml"

#: The `vault` sub-app. Registered on the root app by `cli/vault.py`; noun modules add their sub-apps to it.
vault_app = typer.Typer(no_args_is_help=True, help="Vaults: credentials, services, grants, sessions, run.")

VaultOpt = Annotated[
    str | None,
    typer.Option(
        "--vault",
        metavar="NAME",
        help="Vault to use (default: AGENT_VAULT_VAULT, .agent-vault.toml, 'vault use', then 'default').",
    ),
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read your login password (step-up) from the first line of stdin; anything else read "
        "from stdin (a value, a file) follows on the next lines.",
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class Cancelled(AgentVaultError):
    code = "cancelled"
    status = 400
    hint = "Nothing was changed; run the command again to start over."


def exit_with(code: int) -> NoReturn:
    """End the command with exit `code`. SystemExit, because click's non-standalone `main()` returns (and the
    entry point then drops) the code of a typer.Exit."""
    raise SystemExit(code)


def find_project_file(start: Path | None = None) -> Path | None:
    """`.agent-vault.toml` in `start` (default: the current directory) or the nearest parent."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        p = d / PROJECT_FILE
        if p.is_file():
            return p
    return None


def project_settings(start: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    path = find_project_file(start)
    if path is None:
        return None, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise InvalidRequest(
            f"cannot parse {path}", hint='It should contain lines like vault = "name".'
        ) from None
    for k in ("vault", "addr"):
        if k in data and not isinstance(data[k], str):
            raise InvalidRequest(f"{path}: {k} must be a string")
    return path, data


def context_file(home: Path) -> Path:
    return home / "cli" / "context"


def read_context(home: Path) -> str | None:
    try:
        name = context_file(home).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return name or None


def write_context(home: Path, name: str) -> None:
    ensure_dir(home)
    ensure_dir(home / "cli")
    write_private(context_file(home), name + "\n")


def resolve_vault(explicit: str | None = None, *, start: Path | None = None) -> tuple[str, str]:
    """(vault name, where it came from) following the SPEC §10 order."""
    if explicit:
        return explicit, "--vault"
    env = os.environ.get("AGENT_VAULT_VAULT")
    if env:
        return env, "AGENT_VAULT_VAULT"
    path, data = project_settings(start)
    if path is not None and data.get("vault"):
        return str(data["vault"]), str(path)
    ctx = read_context(G.home)
    if ctx:
        return ctx, str(context_file(G.home))
    return "default", "default"


def vault_name(explicit: str | None) -> str:
    return resolve_vault(explicit)[0]


def api_addr() -> str | None:
    """--addr > AGENT_VAULT_ADDR > .agent-vault.toml `addr`; None lets the Client choose (the server
    running for this home, then the login's addr, then the default: cli/client.resolve_addr)."""
    if G.addr or os.environ.get("AGENT_VAULT_ADDR"):
        return G.addr or os.environ.get("AGENT_VAULT_ADDR")
    addr = project_settings()[1].get("addr")
    return str(addr) if addr else None


def client(token: str | None = None) -> Client:
    return Client(api_addr(), G.home, token)


def seg(value: str) -> str:
    """One URL path segment."""
    return quote(value, safe="@")


def step_up(password_stdin: bool) -> str | None:
    """The user's password for a step-up action (SPEC §3.4): first stdin line or a hidden prompt.

    Without a terminal and without --password-stdin, None is sent: a server started with
    --no-step-up accepts that; any other answers 401 step_up_failed without counting it as a failed
    login, and the CLI's one error line says to pass --password-stdin (cli/client.NO_TERMINAL_HINT).
    Before the prompt, the server must answer: an unreachable one is reported before a password is typed.
    """
    if not password_stdin and not sys.stdin.isatty():
        return None
    if not password_stdin:
        client().check_reachable()
    return password("Your login password (confirmation): ", password_stdin)


def confirm(question: str, yes: bool) -> None:
    """Destructive actions: ask on a terminal, require --yes otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidRequest(f"{question.rstrip('?')}: confirmation needed", hint="Pass --yes to confirm.")
    if not typer.confirm(question, default=False):
        raise Cancelled("cancelled")


def vault_grants(specs: list[str] | None, default_role: str, roles: tuple[str, ...]) -> list[dict[str, str]]:
    """`--vault V[:ROLE]` values -> [{vault, role}]."""
    out = []
    for spec in specs or []:
        name, _, role = spec.partition(":")
        role = role or default_role
        if not name:
            raise typer.BadParameter(f"{spec!r} is not VAULT[:ROLE]", param_hint="--vault")
        if role not in roles:
            raise typer.BadParameter(f"role must be one of {', '.join(roles)}", param_hint="--vault")
        out.append({"vault": name, "role": role})
    return out
