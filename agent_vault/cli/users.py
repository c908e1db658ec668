"""`user …`: humans of the instance (owner only, step-up for changes) and `user accept` for invitees."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import typer

from agent_vault.cli import G, app
from agent_vault.cli.auth import store_login
from agent_vault.cli.client import Client
from agent_vault.cli.common import (
    PasswordStdinOpt,
    YesOpt,
    api_addr,
    client,
    confirm,
    seg,
    step_up,
    vault_grants,
)
from agent_vault.cli.output import out
from agent_vault.cli.prompts import password, read_stdin_line
from agent_vault.domain.names import check_email
from agent_vault.errors import InvalidRequest

user_app = typer.Typer(no_args_is_help=True, help="Users: humans who log in (owner manages them).")
app.add_typer(user_app, name="user")

EmailArg = Annotated[str, typer.Argument(metavar="EMAIL")]
ROLES = ("owner", "member")


@user_app.command("invite")
def invite(
    email: EmailArg,
    role: Annotated[str, typer.Option("--role", help="owner | member")] = "member",
    vault: Annotated[
        list[str] | None,
        typer.Option(
            "--vault",
            metavar="V[:ROLE]",
            help="Grant on vault V with role proxy, member (default) or admin; repeatable.",
        ),
    ] = None,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Invite a user; prints the invite URL (valid 48 h) to hand over (step-up)."""
    if role not in ROLES:
        raise typer.BadParameter("must be owner or member", param_hint="--role")
    check_email(email)
    grants = vault_grants(vault, "member", ("proxy", "member", "admin"))
    data = client().post(
        "/v1/users/invites",
        {"password": step_up(password_stdin), "email": email, "role": role, "vaults": grants},
    )
    if out.json_mode:
        out.data(data)
        return
    out.line(str(data["invite_url"]))
    out.info(
        f"invited {email} as {role} until {data.get('expires_at')}; they run "
        f"'agent-vault user accept <url>' or open the URL"
    )


@user_app.command("list")
def list_users() -> None:
    """Users and their instance role."""
    data = client().get("/v1/users")
    out.table(data, data["users"], ["email", "role", "created_at"])


@user_app.command("remove")
def remove(email: EmailArg, yes: YesOpt = False, password_stdin: PasswordStdinOpt = False) -> None:
    """Remove a user with their grants and logins (step-up; the last owner cannot be removed)."""
    confirm(f"Remove user {email}?", yes)
    client().delete(f"/v1/users/{seg(email)}", {"password": step_up(password_stdin)})
    out.data({"removed": email}, f"removed user {email}")


@user_app.command("set-role")
def set_role(
    email: EmailArg,
    role: Annotated[str, typer.Option("--role", help="owner | member")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Change a user's instance role (step-up)."""
    if role not in ROLES:
        raise typer.BadParameter("must be owner or member", param_hint="--role")
    data = client().patch(f"/v1/users/{seg(email)}", {"password": step_up(password_stdin), "role": role})
    out.data(data, f"{email} is now {role}")


def parse_invite(text: str) -> tuple[str, str | None]:
    """(invite token, server base URL if `text` was a URL)."""
    text = text.strip()
    if text.startswith("av_inv_"):
        return text, None
    parts = urlsplit(text)
    token = (parse_qs(parts.query).get("token") or [""])[0]
    if not token.startswith("av_inv_") or not parts.scheme:
        raise InvalidRequest(
            "not an invite URL or token", hint="Paste the URL printed by 'agent-vault user invite'."
        )
    return token, f"{parts.scheme}://{parts.netloc}"


@user_app.command("accept")
def accept(
    invite_ref: Annotated[
        str | None,
        typer.Argument(
            metavar="[URL_OR_TOKEN]",
            help="The invite URL or its av_inv_ token (omit it to keep it off the command line: it is "
            "then asked for, or read with --invite-stdin).",
        ),
    ] = None,
    invite_stdin: Annotated[
        bool,
        typer.Option("--invite-stdin", help="Read the invite URL or token from the first line of stdin."),
    ] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the new password from the first line of stdin (the next one with --invite-stdin).",
        ),
    ] = False,
) -> None:
    """Accept an invite: choose your password, then the CLI is logged in as you."""
    if invite_ref is not None and invite_stdin:
        raise InvalidRequest("give the invite either as an argument or with --invite-stdin, not both")
    if invite_stdin:
        invite_ref = read_stdin_line()
    elif invite_ref is None:
        if not sys.stdin.isatty():
            raise InvalidRequest(
                "the invite URL or token is required", hint="Pass it as an argument or with --invite-stdin."
            )
        invite_ref = getpass.getpass("Invite URL or token: ")
    token, base = parse_invite(invite_ref)
    if password_stdin:
        pw = password("", True)
    else:
        if not sys.stdin.isatty():
            raise InvalidRequest(
                "a new password is required", hint="Pass --password-stdin and pipe it on stdin."
            )
        pw = password("New password (>= 8 chars): ", False)
        if password("Repeat: ", False) != pw:
            raise InvalidRequest("the passwords do not match")
    addr = api_addr() or base or os.environ.get("AGENT_VAULT_ADDR")
    c = Client(addr, G.home)
    result = c.request("POST", f"/v1/invites/{seg(token)}/accept", auth=False, json_body={"password": pw})
    info = store_login(c.addr, result)
    out.data(info, f"welcome {info['email']}: logged in at {c.addr}")
