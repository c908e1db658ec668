"""`vault credential …`: write-only credential values (SPEC §3.3, §10).

Values come from a hidden prompt, `--stdin`, `--from-env VAR` or `--from-file PATH` — never argv — and are
never printed, except by `get --reveal` (admin, terminal only, typed confirmation and step-up; audited).
`set --command CMD` / `--file PATH` make a key dynamic (issue #16): the server runs CMD / reads PATH when
a request needs the value and keeps it in memory for `--ttl`; owners only, with step-up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from agent_vault import credsource
from agent_vault.cli.common import VaultOpt, YesOpt, client, confirm, seg, step_up, vault_app, vault_name
from agent_vault.cli.durations import format_duration
from agent_vault.cli.output import out
from agent_vault.cli.prompts import secret_value
from agent_vault.domain.names import check_key
from agent_vault.errors import InvalidRequest, NotFound

credential_app = typer.Typer(no_args_is_help=True, help="Credential values (write-only; names are listed).")
vault_app.add_typer(credential_app, name="credential")

KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="Credential key, e.g. OPENAI_API_KEY.")]
StdinOpt = Annotated[
    bool, typer.Option("--stdin", help="Read the value from stdin (one trailing newline dropped).")
]
FromEnvOpt = Annotated[
    str | None, typer.Option("--from-env", metavar="VAR", help="Take the value from $VAR.")
]
FromFileOpt = Annotated[
    Path | None, typer.Option("--from-file", metavar="PATH", help="Read the value from PATH.")
]


@credential_app.command("list")
def list_credentials(vault: VaultOpt = None) -> None:
    """Key names and metadata; values are never shown."""
    data = client().get(f"/v1/vaults/{seg(vault_name(vault))}/credentials")
    rows = [{**r, "ttl": _ttl_words(r.get("ttl"))} for r in data["credentials"]]  # --json: as the API said
    out.table(
        data,
        rows,
        ["key", "has_value", "source", "ttl", "version", "updated_at", "used_by", "description"],
    )


def _ttl_words(ttl: object) -> object:
    """A source's TTL in seconds as the duration `--ttl` takes (`300.0` -> `5m`); anything else as is."""
    if isinstance(ttl, int | float) and not isinstance(ttl, bool):
        return format_duration(ttl)
    return ttl


def _usage(message: str, flag: str) -> typer.BadParameter:
    """A usage error (exit 2, one line), as for any bad flag."""
    return typer.BadParameter(message, param_hint=flag)


def _one_value_source(stdin: bool, from_env: str | None, from_file: Path | None) -> None:
    if sum(bool(x) for x in (stdin, from_env, from_file)) > 1:
        raise _usage("use only one of --stdin, --from-env and --from-file", "--stdin/--from-env/--from-file")


def _value(key: str, stdin: bool, from_env: str | None, from_file: Path | None) -> str:
    """The value from the one chosen input; it must be UTF-8 text (the message never shows it)."""
    not_text = InvalidRequest(
        "the value must be UTF-8 text",
        hint="Store text (for binary data, store its base64 encoding); nothing was written.",
    )
    try:
        value = secret_value(key, stdin=stdin, from_env=from_env, from_file=from_file)
    except UnicodeError:  # --stdin / --from-file bytes that do not decode
        raise not_text from None
    try:
        value.encode("utf-8")  # --from-env, or a surrogate-escaped stdin: undecodable bytes as surrogates
    except UnicodeError:
        del value
        raise not_text from None
    return value


def _write(
    action: str,
    key: str,
    vault: str | None,
    description: str | None,
    stdin: bool,
    from_env: str | None,
    from_file: Path | None,
) -> None:
    check_key(key)
    _one_value_source(stdin, from_env, from_file)
    verb = action
    value = _value(key, stdin, from_env, from_file)
    v = vault_name(vault)
    c = client()
    path = f"/v1/vaults/{seg(v)}/credentials/{seg(key)}"
    if (
        action != "set" and description is not None
    ):  # rotate + new description: PUT, once it is known to exist
        known = {x["key"] for x in c.get(f"/v1/vaults/{seg(v)}/credentials")["credentials"]}
        if key not in known:
            raise NotFound(
                f"credential {key} not found in vault {v}",
                hint="List them with 'agent-vault vault credential list'.",
            )
        action = "set"
    if action == "set":
        body: dict[str, str] = {"value": value}
        if description is not None:
            body["description"] = description
        data = c.put(path, body)
    else:
        data = c.post(path + "/rotate", {"value": value})
    del value
    out.data(data, f"{verb} {key} in vault {v} (version {data.get('version')})")


def _set_source(
    key: str,
    vault: str | None,
    description: str | None,
    source: dict[str, object],
    password_stdin: bool,
) -> None:
    check_key(key)
    v = vault_name(vault)
    body: dict[str, object] = {"source": source, "password": step_up(password_stdin)}
    if description is not None:
        body["description"] = description
    data = client().put(f"/v1/vaults/{seg(v)}/credentials/{seg(key)}", body)
    ttl = data.get("ttl")
    every = f"cached {_ttl_words(ttl)}" if isinstance(ttl, int | float) else "re-read when it changes"
    out.data(
        data,
        f"set {key} in vault {v} from a {data.get('source')} source ({every}; version {data.get('version')})",
    )
    for warning in data.get("warnings") or []:  # accepted, but it will not serve a value as it is
        out.warn(f"warning: {warning}")


@credential_app.command("set")
def set_credential(
    key: KeyArg,
    vault: VaultOpt = None,
    description: Annotated[str | None, typer.Option("--description", help="What it is.")] = None,
    stdin: StdinOpt = False,
    from_env: FromEnvOpt = None,
    from_file: FromFileOpt = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command", metavar="CMD", help="Dynamic: the value is what CMD prints (owner, step-up)."
        ),
    ] = None,
    shell: Annotated[bool, typer.Option("--shell", help="Run --command through /bin/sh -c.")] = False,
    file: Annotated[
        str | None,
        typer.Option(
            "--file", metavar="PATH", help="Dynamic: the value is PATH's content, re-read on change."
        ),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Keep a dynamic value in memory this long (30s, 5m, 1h).")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Command time limit (default 10s).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Step-up password (dynamic sources) from stdin.")
    ] = False,
) -> None:
    """Create or replace a value (hidden prompt unless --stdin/--from-env/--from-file), or make KEY
    dynamic with --command CMD or --file PATH (instance owners; asks for your login password)."""
    if command is not None or file is not None:
        if command is not None and file is not None:
            raise _usage("use only one of --command and --file", "--command/--file")
        if stdin or from_env or from_file:
            raise _usage(
                "--command/--file take no value (--stdin, --from-env, --from-file)", "--command/--file"
            )
        if shell and command is None:
            raise _usage("--shell needs --command", "--shell")
        source: dict[str, object] = (
            {"kind": "command", "command": command, "shell": shell}
            if command is not None
            else {"kind": "file", "path": str(Path(file or "").expanduser().absolute())}
        )
        for flag, text, name in (("--ttl", ttl, "ttl"), ("--timeout", timeout, "timeout")):
            if text is not None:
                try:
                    credsource.parse_duration(text, name)  # the server checks the range
                except InvalidRequest as e:
                    raise _usage(f"{e.message} ({e.hint})", flag) from None
                source[name] = text
        _set_source(key, vault, description, source, password_stdin)
        return
    if ttl is not None or timeout is not None or shell or password_stdin:
        raise _usage(
            "--ttl, --timeout, --shell and --password-stdin go with --command or --file",
            "--ttl/--timeout/--shell/--password-stdin",
        )
    _write("set", key, vault, description, stdin, from_env, from_file)


@credential_app.command("rotate")
def rotate_credential(
    key: KeyArg,
    vault: VaultOpt = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Also change the description.")
    ] = None,
    stdin: StdinOpt = False,
    from_env: FromEnvOpt = None,
    from_file: FromFileOpt = None,
) -> None:
    """Replace an existing value (fails if KEY does not exist)."""
    _write("rotated", key, vault, description, stdin, from_env, from_file)


@credential_app.command("delete")
def delete_credential(
    key: KeyArg,
    vault: VaultOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Delete even if services use it.")] = False,
    yes: YesOpt = False,
) -> None:
    """Delete a credential (refused while a service uses it, unless --force)."""
    v = vault_name(vault)
    confirm(f"Delete credential {key} from vault {v}?", yes)
    client().delete(
        f"/v1/vaults/{seg(v)}/credentials/{seg(key)}", params={"force": "true"} if force else None
    )
    out.data({"deleted": key, "vault": v}, f"deleted {key} from vault {v}")


@credential_app.command("get")
def get_credential(
    key: KeyArg,
    vault: VaultOpt = None,
    reveal: Annotated[bool, typer.Option("--reveal", help="Print the value (admin, step-up).")] = False,
) -> None:
    """Reveal a value: vault admins only, on a terminal, after typing KEY and your password (audited)."""
    if not reveal:
        raise InvalidRequest("credential values are write-only", hint="Pass --reveal to print it (audited).")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InvalidRequest(
            "revealing a value needs an interactive terminal",
            hint="Run it yourself in a terminal; it cannot be scripted.",
        )
    v = vault_name(vault)
    _refuse_unrevealable(key, v)  # before any prompt: nothing to type for a value that cannot be shown
    typed = typer.prompt(f"This prints the value of {key} from vault {v}. Type {key} to confirm")
    if typed.strip() != key:
        raise InvalidRequest("confirmation did not match; nothing revealed")
    pw = step_up(False)
    data = client().post(f"/v1/vaults/{seg(v)}/credentials/{seg(key)}/reveal", {"password": pw})
    out.secret(str(data["value"]))


def _refuse_unrevealable(key: str, vault: str) -> None:
    """A key from a command or file source has no stored value to reveal; an absent key none at all.
    (The server refuses both too, after the step-up; this answers before asking anything.)"""
    listed = client().get(f"/v1/vaults/{seg(vault)}/credentials")["credentials"]
    row = next((x for x in listed if x.get("key") == key), None)
    if row is None or not row.get("has_value", True):
        raise NotFound(
            f"credential {key} {'not found' if row is None else 'has no value'} in vault {vault}",
            hint="List them with 'agent-vault vault credential list'.",
        )
    source = row.get("source") or "static"
    if source != "static":
        raise InvalidRequest(
            f"credential {key} comes from a {source} source; its value is never stored",
            hint="Run the command or read the file yourself.",
        )
