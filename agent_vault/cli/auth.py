"""`auth login | logout | status`: the CLI's own user login (an av_usr_ token kept in the OS keyring, or
in cli/session.json (0600) when no keyring is usable; see cli/loginstore.py).

The login token is never printed. It is not a proxy credential: agents get agent or session tokens.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Annotated, Any

import typer

from agent_vault.cli import G, app
from agent_vault.cli.client import ApiError, clear_login, load_login, save_login
from agent_vault.cli.common import client, exit_with
from agent_vault.cli.loginstore import where
from agent_vault.cli.output import out
from agent_vault.cli.prompts import password
from agent_vault.errors import AgentVaultError, InvalidRequest

auth_app = typer.Typer(no_args_is_help=True, help="Log the CLI in and out (user login).")
app.add_typer(auth_app, name="auth")


def store_login(addr: str, result: dict[str, Any]) -> dict[str, Any]:
    """Save a login answer ({token, expires_at, user}); returns the public part (no token)."""
    user = result.get("user") or {}
    email = str(user.get("email", ""))
    stored_in = save_login(
        G.home,
        {"addr": addr, "token": result["token"], "email": email, "expires_at": result.get("expires_at")},
    )
    return {
        "addr": addr,
        "email": email,
        "role": user.get("role"),
        "expires_at": result.get("expires_at"),
        "stored_in": "OS keyring" if stored_in == "keyring" else stored_in,
    }


@auth_app.command("login")
def login(
    email: Annotated[str | None, typer.Option("--email", help="Your login email.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
    label: Annotated[
        str | None, typer.Option("--label", help="A label for this login (shown in the UI).")
    ] = None,
) -> None:
    """Log in with email and password; the token goes to the OS keyring (else a 0600 file), never printed."""
    if email is None:
        if password_stdin or not sys.stdin.isatty():
            raise InvalidRequest("--email is required without a terminal")
        email = typer.prompt("Email")
    c = client()
    if not password_stdin:  # an unreachable server is said before a password is typed for it
        c.check_reachable()
    pw = password(f"Password for {email}: ", password_stdin)
    try:
        result = c.request(
            "POST",
            "/v1/auth/login",
            auth=False,
            json_body={"email": email, "password": pw, "label": label or f"cli@{socket.gethostname()}"},
        )
    except ApiError as e:
        if e.status == 401:  # the server's hint ("log in with ...") is what the user just did
            e.hint = "Check the email and the password (your login, not the master password) and try again."
        raise
    info = store_login(c.addr, result)
    out.data(info, f"logged in as {info['email']} at {c.addr} (until {info['expires_at']})")


@auth_app.command("logout")
def logout() -> None:
    """Revoke the stored login on the server and forget it locally."""
    login_data = load_login(G.home)
    if not login_data or not login_data.get("token"):
        out.data({"logged_out": False}, "not logged in")
        return
    c = client(token=str(login_data["token"]))
    c.addr = str(login_data.get("addr") or c.addr).rstrip("/")
    try:
        c.post("/v1/auth/logout")
    except AgentVaultError as e:
        out.warn(f"warning: the server did not revoke the login ({e.message}); forgetting it locally")
    clear_login(G.home)
    out.data(
        {"logged_out": True, "email": login_data.get("email")}, f"logged out {login_data.get('email', '')}"
    )


@auth_app.command("status")
def status() -> None:
    """Who the CLI acts as (AGENT_VAULT_TOKEN or the stored login) and whether the server accepts it."""
    login_data = load_login(G.home) or {}
    c = client()
    info: dict[str, Any] = {
        "addr": c.addr,
        "source": None,
        "email": login_data.get("email"),
        "expires_at": login_data.get("expires_at"),
        "valid": False,
    }
    if os.environ.get("AGENT_VAULT_TOKEN"):
        info["source"] = "AGENT_VAULT_TOKEN"
    elif c.token:
        at = where(G.home)
        info["source"] = "OS keyring" if at == "keyring" else at
    if not c.token:
        out.data(info, "not logged in (run 'agent-vault auth login')")
        exit_with(1)
    try:
        me = c.get("/v1/auth/me")
    except ApiError as e:
        if e.status != 401:
            raise
        me = None
    if me is None:
        out.data(info, f"the login at {c.addr} is invalid or expired (run 'agent-vault auth login')")
        exit_with(1)
    info.update(
        valid=True, kind=me.get("kind"), name=me.get("name"), role=me.get("role"), vaults=me.get("vaults", [])
    )
    vaults = ", ".join(f"{v['name']} ({v['role']})" for v in info["vaults"]) or "-"
    out.data(
        info,
        f"logged in to {c.addr} as {me.get('kind')} {me.get('name')} (role {me.get('role')}) "
        f"via {info['source']}\nvaults: {vaults}",
    )
