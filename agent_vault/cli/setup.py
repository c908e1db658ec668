"""Local commands: init, master-password (`server` and `status` are in cli/serverctl.py)."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from agent_vault import oskeyring
from agent_vault.cli import G, app
from agent_vault.cli.output import out
from agent_vault.cli.prompts import new_password, password, read_stdin_line
from agent_vault.config import env_settings
from agent_vault.errors import Conflict, InvalidRequest
from agent_vault.home import Home

LOGIN_MIN = 8  # the minimums instance.init_instance (and domain.users, keys.check_master_password) enforce
MASTER_MIN = 12


@app.command()
def init(
    key_mode: Annotated[str, typer.Option(help="password | keyring | passwordless")] = "password",
    owner_email: Annotated[str | None, typer.Option(help="The owner's login email.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the owner's login password from stdin.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Skip confirmations.")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql://USER@HOST:PORT/DB to create the instance in (or DATABASE_URL)."),
    ] = None,
) -> None:
    """Create the home, database, keys, CA, the owner and vault `default` (server stopped).

    Without a terminal: --owner-email, --password-stdin (the owner's login password, one line) and,
    unless --key-mode passwordless, the master password in AGENT_VAULT_MASTER_PASSWORD.

    With PostgreSQL, run it once per database; every replica then starts with the master password."""
    initialise(
        key_mode=key_mode, owner_email=owner_email, password_stdin=password_stdin, database_url=database_url
    )


def _no_terminal_sources(owner_email: str | None, password_stdin: bool, need_master: bool) -> list[str]:
    """What init cannot ask for without a terminal and was not given another way (flag / env)."""
    missing = []
    if owner_email is None:
        missing.append("--owner-email")
    if not password_stdin:
        missing.append("--password-stdin (the owner's login password)")
    if need_master:
        missing.append("AGENT_VAULT_MASTER_PASSWORD (the master password)")
    return missing


def initialise(
    *,
    key_mode: str,
    owner_email: str | None,
    password_stdin: bool,
    database_url: str | None = None,
    starting_server: bool = False,
) -> str | None:
    """The work of `init`. Returns the master password (None when passwordless), so that a first
    `server` start, which calls this with `starting_server=True`, need not ask for it again.

    The master password comes from AGENT_VAULT_MASTER_PASSWORD (SPEC §10, removed from the environment
    once read), else a prompt. Without a terminal nothing is ever prompted for: a missing source is one
    InvalidRequest line naming the flags/env to use (getpass would warn, echo or read EOF)."""
    from agent_vault import keys
    from agent_vault.instance import init_instance

    if key_mode not in keys.KEY_MODES:
        raise typer.BadParameter("must be password, keyring or passwordless", param_hint="--key-mode")
    settings = env_settings(home=G.home, database_url=database_url)
    home = Home(settings.home)
    if not settings.uses_postgres and home.initialised():
        raise Conflict(
            "this home is already initialised",
            hint=f"{home.root} holds an instance: start it with 'agent-vault server', "
            "or pass another --home for a new one.",
        )
    master = keys.master_password_from_env() if key_mode != "passwordless" else None
    ask_master = key_mode != "passwordless" and master is None
    if not sys.stdin.isatty():
        missing = _no_terminal_sources(owner_email, password_stdin, ask_master)
        if missing:
            env = "" if key_mode == "passwordless" else "AGENT_VAULT_MASTER_PASSWORD=... "
            mode = "--key-mode passwordless " if key_mode == "passwordless" else ""
            raise InvalidRequest(
                f"no terminal to ask on: init needs {', '.join(missing)}",
                hint=f"e.g. printf '%s\\n' LOGIN_PASSWORD | {env}agent-vault init {mode}"
                "--owner-email you@example.com --password-stdin",
            )
    if owner_email is None:
        owner_email = typer.prompt("Owner email")
    if not password_stdin:
        out.info(
            f"The login password is how you log in to the CLI and the web UI "
            f"({LOGIN_MIN}+ characters; you can change it later)."
        )
    if ask_master:
        out.info(
            f"The master password encrypts every stored credential; it cannot be recovered if lost "
            f"({MASTER_MIN}+ characters, different from the login password)."
        )
    if password_stdin:
        owner_pw = read_stdin_line()
    else:
        owner_pw = new_password(
            f"Login password ({LOGIN_MIN}+ characters): ", what="login password", minimum=LOGIN_MIN
        )
    if ask_master:
        master = new_password(
            f"Master password ({MASTER_MIN}+ characters): ",
            what="master password",
            minimum=MASTER_MIN,
            differs_from=owner_pw,
        )
    instance_id = init_instance(
        settings, key_mode=key_mode, owner_email=owner_email, owner_password=owner_pw, master_password=master
    )
    if key_mode == "passwordless":
        out.warn(keys.PASSWORDLESS_WARNING.format(path=home.dek_file))
    if key_mode == "keyring":
        assert master is not None
        _keyring_note(keys.keyring_set(instance_id, master))
    where = "the PostgreSQL database" if settings.uses_postgres else str(settings.home)
    then = "starting the server" if starting_server else "start it with 'agent-vault server'"
    out.data(
        {"instance_id": instance_id, "home": str(settings.home), "key_mode": key_mode},
        f"initialised {where} (instance {instance_id[:8]}, key mode {key_mode}); {then}",
    )
    return master


def _keyring_note(reason: str | None) -> None:
    """One stderr line saying where the master password for mode `keyring` is (or why not)."""
    if reason is None:
        out.info("the master password is stored in the OS keyring; 'agent-vault server' reads it from there")
        with contextlib.suppress(oskeyring.KeyringUnavailable):
            if oskeyring.plaintext(backend := oskeyring.backend_name()):
                out.warn(
                    f"warning: the keyring backend {backend} stores it UNENCRYPTED on disk (development only)"
                )
    else:
        out.warn(
            f"note: the master password is NOT in the OS keyring ({reason}); start the server with "
            "AGENT_VAULT_MASTER_PASSWORD, --password-stdin or at the prompt"
        )


master_app = typer.Typer(no_args_is_help=True, help="Change how the data key is protected (server stopped).")
app.add_typer(master_app, name="master-password")


def _stdin_passwords(command: str, wanted: list[str], env_given: bool) -> list[str]:
    """Exactly the passwords `wanted` (their descriptions, in order), one per stdin line. A different
    number of lines is refused: a password silently taken from the wrong line (or ignored) would leave
    the instance under a password the user does not know."""
    lines = sys.stdin.read().splitlines()
    while lines and not lines[-1]:
        lines.pop()  # a trailing blank line is not a password
    if len(lines) != len(wanted):
        got = f"{len(lines)} line{'s' if len(lines) != 1 else ''}"
        hint = (
            "AGENT_VAULT_MASTER_PASSWORD is not read with --password-stdin: put every password on stdin."
            if env_given
            else "One password per line."
        )
        raise InvalidRequest(
            f"stdin has {got}; 'master-password {command} --password-stdin' reads {len(wanted)}: "
            + ", then ".join(wanted),
            hint=hint,
        )
    return lines


def _refuse_if_running(home: Home, uses_postgres: bool) -> None:
    """The key mode changes only while no server of this home runs (as `migrate-db`)."""
    from agent_vault.lifecycle import probe

    running = probe(home)
    if running is not None:
        raise Conflict(
            f"an agent-vault server is running for {home.root}: {running.describe()}",
            hint="Stop it first ('agent-vault server stop')"
            + ("; with PostgreSQL stop every replica" if uses_postgres else "")
            + ", then run this command again.",
        )


def _rewrap(command: str, new_mode: str | None, password_stdin: bool, *, need_new: bool) -> None:
    """Unwrap with the current password, re-wrap for the new mode/password (no server running).

    Passwords: with --password-stdin, stdin holds every password the command needs, one per line (the
    current one unless passwordless, then the new one) and AGENT_VAULT_MASTER_PASSWORD is not read;
    without it, the current one comes from AGENT_VAULT_MASTER_PASSWORD, else a prompt, and the new one
    from a prompt (typed twice)."""
    import json

    from agent_vault import keys
    from agent_vault.home import write_private
    from agent_vault.instance import identify
    from agent_vault.lifecycle import ServerLock
    from agent_vault.store import Store

    settings = env_settings(home=G.home)
    home = Home(settings.home)
    ident = identify(settings)
    old_mode = ident.key_mode
    if new_mode == "passwordless" and old_mode == "passwordless":
        raise InvalidRequest("this instance is already passwordless", hint="Nothing to remove.")
    _refuse_if_running(home, settings.uses_postgres)
    with ServerLock(home):  # no server of this home starts while the data key is re-wrapped
        env_pw = keys.master_password_from_env()  # removed from the environment in every case
        need_old = old_mode != "passwordless"
        mode = new_mode or (old_mode if old_mode != "passwordless" else "password")
        new_prompt = f"New master password ({MASTER_MIN}+ characters): "
        if password_stdin:
            wanted = ["the current master password"] if need_old else []
            wanted += ["the new master password"] if need_new else []
            given = _stdin_passwords(command, wanted, env_pw is not None)
            old = given[0] if need_old else None
            new = given[-1] if need_new else None
        else:
            old = (env_pw or password("Current master password: ", False)) if need_old else None
            new = None
            if need_new:
                if not sys.stdin.isatty():
                    raise InvalidRequest(
                        "no terminal to type the new master password on",
                        hint=f"Pipe the passwords, one per line: agent-vault master-password {command} "
                        "--password-stdin",
                    )
                new = new_password(new_prompt, what="master password", minimum=MASTER_MIN)
        store = Store(settings.sqlalchemy_url())
        try:
            note = keys.change_key_mode(home, store, ident.instance_id, old_mode, old, mode, new)
        finally:
            store.close()
        if not settings.uses_postgres:
            write_private(home.instance_file, json.dumps({**home.instance(), "key_mode": mode}, indent=2))
    if mode == "keyring":
        _keyring_note(note)
    if mode == "passwordless":
        out.warn(keys.PASSWORDLESS_WARNING.format(path=home.dek_file))
    out.data({"key_mode": mode}, f"key mode is now {mode}")


_KEYRING_HELP = "Key mode keyring: also store the new password in the OS keyring."


@master_app.command("change")
def master_change(
    keyring: Annotated[bool, typer.Option(help=_KEYRING_HELP)] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            help="Current, then new password on stdin, one per line (AGENT_VAULT_MASTER_PASSWORD is "
            "then not read)."
        ),
    ] = False,
) -> None:
    """Change the master password (server stopped). The key mode stays (keyring: the entry is updated)
    unless --keyring switches a `password` instance to `keyring`.

    The current password: stdin with --password-stdin, else AGENT_VAULT_MASTER_PASSWORD, else a prompt;
    the new one: stdin with --password-stdin, else a prompt (typed twice)."""
    _rewrap("change", "keyring" if keyring else None, password_stdin, need_new=True)


@master_app.command("set")
def master_set(
    keyring: Annotated[bool, typer.Option(help=_KEYRING_HELP)] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            help="Read the passwords from stdin, one per line: the current one (unless the instance is "
            "passwordless), then the new one (AGENT_VAULT_MASTER_PASSWORD is then not read)."
        ),
    ] = False,
) -> None:
    """Set a new master password and the key mode: `password`, or `keyring` with --keyring (server stopped).

    Protects a passwordless instance; on a protected one it replaces the password like `change` (the
    current one is needed) and sets the mode (without --keyring a keyring entry is removed)."""
    _rewrap("set", "keyring" if keyring else "password", password_stdin, need_new=True)


@master_app.command("remove")
def master_remove(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the data key will sit in dek.key.")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            help="Read the current password from stdin (AGENT_VAULT_MASTER_PASSWORD is then not read)."
        ),
    ] = False,
) -> None:
    """Switch to passwordless mode (DEK in <home>/dek.key, 0600; server stopped). Needs --yes."""
    if not yes:
        raise InvalidRequest("removing the master password needs --yes")
    _rewrap("remove", "passwordless", password_stdin, need_new=False)


from agent_vault.cli import serverctl  # noqa: E402, F401  (registers server, server stop, status)
