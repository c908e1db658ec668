"""`vault hold list | approve | deny` (issue 19): requests held for a human's decision.

A held request waits in the proxy while you decide. Approving needs your login password (step-up);
`--scope 1h` also lets the agent's next requests to that service through for an hour, `--scope always`
turns the approval flag off for that agent and service (a recorded service change, admin only).
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from agent_vault.cli import choice
from agent_vault.cli.common import PasswordStdinOpt, VaultOpt, client, seg, step_up, vault_name
from agent_vault.cli.output import inert, out
from agent_vault.cli.vault import vault_app
from agent_vault.errors import NotFound

hold_app = typer.Typer(no_args_is_help=True, help="Requests held for approval: list, approve, deny.")
vault_app.add_typer(hold_app, name="hold")

SCOPES = ("once", "1h", "always")
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Hold id (from 'vault hold list').")]


#: A hold id as the server makes them (hex, api/holds.HoldId): anything else cannot be pending.
HOLD_ID = re.compile(r"[0-9a-f]{1,64}")


def _pending_id(hold_id: str, vault: str) -> str:
    """`hold_id` if it can name a hold, else the one-line "no pending hold" (not the API's 422 about a
    path parameter): checked before the step-up password is asked for."""
    hid = hold_id.strip().lower()
    if not HOLD_ID.fullmatch(hid):
        shown = inert(hold_id[:16]) + ("..." if len(hold_id) > 16 else "")
        raise NotFound(
            f"no pending hold {shown} in vault {vault} (hold ids are hexadecimal)",
            hint="List the pending holds with 'agent-vault vault hold list'.",
        )
    return hid


def _path(vault: str, hold_id: str | None = None) -> str:
    base = f"/v1/vaults/{seg(vault)}/holds"
    return base if hold_id is None else f"{base}/{seg(hold_id)}"


@hold_app.command("list")
def list_holds(vault: VaultOpt = None) -> None:
    """Requests waiting for a decision, oldest first (member)."""
    data = client().get(_path(vault_name(vault)))
    out.table(data, data["holds"], ["id", "agent", "service", "method", "host", "path", "expires_at"])


@hold_app.command("approve")
def approve(
    hold_id: IdArg,
    vault: VaultOpt = None,
    scope: Annotated[
        str, typer.Option("--scope", help="once | 1h (this agent+service for an hour) | always.")
    ] = "once",
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Let a held request go upstream (step-up); the agent gets the real response."""
    scope = choice(scope, SCOPES, "--scope")
    v = vault_name(vault)
    hold_id = _pending_id(hold_id, v)
    body = {"password": step_up(password_stdin), "scope": scope}
    data = client().post(f"{_path(v, hold_id)}/approve", body)
    what = f"{inert(data['method'])} {inert(data['host'])}{inert(data['path'])}"
    out.data(data, f"approved hold {hold_id} ({what}, scope {scope}) in vault {v}")


@hold_app.command("deny")
def deny(hold_id: IdArg, vault: VaultOpt = None) -> None:
    """Refuse a held request: the agent gets 403 approval_denied."""
    v = vault_name(vault)
    hold_id = _pending_id(hold_id, v)
    data = client().post(f"{_path(v, hold_id)}/deny", {})
    out.data(data, f"denied hold {hold_id} in vault {v}")
