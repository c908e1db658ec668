"""`agent …` (agent identities and their long-lived tokens) and `session create` (short-lived tokens).

Tokens are printed exactly once, alone on stdout, by `agent create`, `agent rotate` and `session create`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from agent_vault.cli import app
from agent_vault.cli.common import (
    PasswordStdinOpt,
    VaultOpt,
    YesOpt,
    client,
    confirm,
    resolve_vault,
    seg,
    step_up,
    vault_grants,
)
from agent_vault.cli.durations import duration_param
from agent_vault.cli.output import out

agent_app = typer.Typer(no_args_is_help=True, help="Agents: non-human identities with long-lived tokens.")
session_app = typer.Typer(no_args_is_help=True, help="Session tokens (short-lived, one vault, proxy role).")
app.add_typer(agent_app, name="agent")
app.add_typer(session_app, name="session")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Agent name.")]
MAX_GRACE = 86400  # seconds: `agent rotate --grace` at most 24h (POST /v1/agents/{name}/rotate)


def _print_token(data: dict[str, object], human_note: str) -> None:
    """The token alone on stdout (so `$(…)` captures it); the note on stderr."""
    if out.json_mode:
        out.data(data)
        return
    out.line(str(data["token"]))
    out.info(human_note)


@agent_app.command("create")
def create(
    name: NameArg,
    vault: Annotated[
        list[str] | None,
        typer.Option(
            "--vault",
            metavar="V[:ROLE]",
            help="Grant on vault V with role proxy (default) or member; repeatable. "
            "Default: the active vault, proxy.",
        ),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="What this agent is.")] = "",
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Create an agent and print its token once (step-up)."""
    grants = vault_grants(vault, "proxy", ("proxy", "member")) or [
        {"vault": resolve_vault()[0], "role": "proxy"}
    ]
    body = {"name": name, "vaults": grants, "description": description, "password": step_up(password_stdin)}
    data = client().post("/v1/agents", body)
    where = ", ".join(f"{g['name']} ({g['role']})" for g in data.get("vaults", []))
    _print_token(
        data,
        f"created agent {name} with access to {where}. The token above is shown once: give it to "
        f"the agent as AGENT_VAULT_TOKEN.",
    )


@agent_app.command("list")
def list_agents() -> None:
    """Agents, their status and grants (never tokens)."""
    data = client().get("/v1/agents")
    out.table(data, data["agents"], ["name", "status", "vaults", "last_used_at", "created_at"])


@agent_app.command("info")
def info(name: NameArg) -> None:
    """One agent: status, grants, last use."""
    data = client().get(f"/v1/agents/{seg(name)}")
    vaults = ", ".join(f"{g['name']} ({g['role']})" for g in data.get("vaults", [])) or "-"
    out.data(
        data,
        f"agent {data['name']}\n  status: {data['status']}\n  vaults: {vaults}\n"
        f"  description: {data.get('description') or '-'}\n  created: {data.get('created_at')}\n"
        f"  last used: {data.get('last_used_at') or 'never'}",
    )


@agent_app.command("revoke")
def revoke(name: NameArg) -> None:
    """Revoke every token of the agent now; 'agent rotate' re-enables it with a new token."""
    data = client().post(f"/v1/agents/{seg(name)}/revoke")
    out.data(data, f"revoked agent {name}")


@agent_app.command("delete")
def delete(name: NameArg, yes: YesOpt = False) -> None:
    """Delete the agent, its grants and tokens."""
    confirm(f"Delete agent {name}?", yes)
    client().delete(f"/v1/agents/{seg(name)}")
    out.data({"deleted": name}, f"deleted agent {name}")


@agent_app.command("rotate")
def rotate(
    name: NameArg,
    grace: Annotated[
        str | None,
        typer.Option(
            "--grace", metavar="DURATION", help="Keep the old token valid this long (max 24h; default 0)."
        ),
    ] = None,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Issue a new token (printed once); the old one dies now or after --grace (step-up)."""
    grace_s = duration_param(grace, "--grace") or 0
    if grace_s > MAX_GRACE:  # the API's limit (SPEC §9): a bad flag value, not a server error
        raise typer.BadParameter("must be at most 24h", param_hint="--grace")
    data = client().post(
        f"/v1/agents/{seg(name)}/rotate", {"password": step_up(password_stdin), "grace_seconds": grace_s}
    )
    when = "now" if not grace_s else f"at {data.get('old_token_expires_at')}"
    _print_token(
        data, f"rotated agent {name}; the old token stops working {when}. The new token is shown once."
    )


@agent_app.command("set-role")
def set_role(
    name: NameArg,
    vault: Annotated[str, typer.Option("--vault", help="Vault of the grant.")],
    role: Annotated[str, typer.Option("--role", help="proxy | member")],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Grant (or change) the agent's role on a vault (step-up)."""
    if role not in ("proxy", "member"):
        raise typer.BadParameter("agents may hold proxy or member", param_hint="--role")
    data = client().put(
        f"/v1/vaults/{seg(vault)}/agents/{seg(name)}", {"password": step_up(password_stdin), "role": role}
    )
    out.data(data, f"agent {name} has role {role} on vault {vault}")


@session_app.command("create")
def session_create(
    vault: VaultOpt = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", metavar="DURATION", help="5m to 7d (default 24h).")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Attribute the session to this agent.")] = None,
    label: Annotated[str, typer.Option("--label", help="Shown in 'vault session list'.")] = "",
    service: Annotated[
        list[str] | None,
        typer.Option("--service", metavar="NAMES", help="Narrow the session to these services (a,b)."),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", metavar="METHODS", help="Narrow the session to these methods (GET)."),
    ] = None,
) -> None:
    """Mint a session token for a sandbox and print it (AGENT_VAULT_TOKEN=<agent token>: for that agent).

    --service/--method narrow it: anything else gets 403 service_not_allowed. Under a session token
    (AGENT_VAULT_TOKEN=av_sess_...) only a narrower session can be minted."""
    from agent_vault.cli.run import split_list

    ttl_s = duration_param(ttl, "--ttl")
    name, source = resolve_vault(vault)
    agent_token = os.environ.get("AGENT_VAULT_TOKEN", "").startswith("av_agt_")
    body = {
        "vault": None if agent_token and source == "default" else name,
        "ttl_seconds": ttl_s,
        "agent": agent,
        "label": label,
        "only_services": split_list(service),
        "only_methods": split_list(method),
    }
    if os.environ.get("AGENT_VAULT_TOKEN", "").startswith("av_sess_") and source == "default":
        body["vault"] = None
    data = client().post("/v1/sessions", body)
    _print_token(
        data,
        f"session {data['id']} on vault {data['vault']} until {data['expires_at']}; proxy "
        f"{data.get('proxy_url')}. Revoke it with 'agent-vault vault session revoke {data['id']}'.",
    )
