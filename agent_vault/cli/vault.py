"""`vault …`: vaults, their settings, discover, grants (agents, users) and sessions.

Credentials, services and `vault run` live in their own modules and attach to the same `vault_app`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent_vault.cli import G, app, choice, credentials, services  # noqa: F401  (credentials/services: sub-apps)
from agent_vault.cli.client import ApiError
from agent_vault.cli.common import (
    PasswordStdinOpt,
    VaultOpt,
    YesOpt,
    client,
    confirm,
    read_context,
    resolve_vault,
    seg,
    step_up,
    vault_app,
    vault_name,
    write_context,
)
from agent_vault.cli.output import out
from agent_vault.domain.names import check_email, check_vault_name
from agent_vault.errors import AgentVaultError

__all__ = ["vault_app"]

app.add_typer(vault_app, name="vault")

POLICIES = ("tunnel", "passthrough", "deny")
ENFORCEMENTS = ("enforce", "dry-run", "learn")
RATE_LIMIT_PROFILES = ("default", "strict", "off", "server")


@vault_app.command("list")
def list_vaults() -> None:
    """Vaults you can use, with your role and pending proposals."""
    data = client().get("/v1/vaults")
    current = resolve_vault()[0]
    rows = [{**v, "": "*" if v["name"] == current else ""} for v in data["vaults"]]
    out.table(data, rows, ["", "name", "role", "unmatched_policy", "enforcement", "pending_proposals"])


@vault_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Vault name (3-64 of a-z, 0-9, single hyphens).")],
) -> None:
    """Create a vault; you become its admin."""
    check_vault_name(name)
    data = client().post("/v1/vaults", {"name": name})
    out.data(data, f"created vault {name} (use it with 'agent-vault vault use {name}')")


@vault_app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="Vault to delete.")],
    yes: YesOpt = False,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Delete a vault with its credentials, services and grants (step-up)."""
    confirm(f"Delete vault {name} with all its credentials and services?", yes)
    pw = step_up(password_stdin)
    client().delete(f"/v1/vaults/{seg(name)}", {"password": pw})
    if read_context(G.home) == name:
        write_context(G.home, "default")
    out.data({"deleted": name}, f"deleted vault {name}")


@vault_app.command("use")
def use(name: Annotated[str, typer.Argument(help="Vault to make active.")]) -> None:
    """Make NAME the active vault for this home (cli/context); --vault and AGENT_VAULT_VAULT still win."""
    check_vault_name(name)
    try:
        client().get(f"/v1/vaults/{seg(name)}")
    except ApiError:
        raise
    except AgentVaultError as e:
        out.warn(f"warning: could not check vault {name} on the server ({e.message})")
    write_context(G.home, name)
    out.data({"vault": name}, f"active vault: {name}")


@vault_app.command("current")
def current(vault: VaultOpt = None) -> None:
    """The vault commands will use, and where that choice came from."""
    name, source = resolve_vault(vault)
    out.data({"vault": name, "source": source}, f"{name} (from {source})")


@vault_app.command("rename")
def rename(
    old: Annotated[str, typer.Argument()],
    new: Annotated[str, typer.Argument()],
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Rename a vault (step-up). Agents using the old name in their proxy URL must be updated."""
    check_vault_name(new)
    pw = step_up(password_stdin)
    data = client().patch(f"/v1/vaults/{seg(old)}", {"password": pw, "name": new})
    if read_context(G.home) == old:
        write_context(G.home, new)
    out.data(data, f"renamed vault {old} to {new}")


@vault_app.command("settings")
def settings(
    vault: VaultOpt = None,
    unmatched_policy: Annotated[
        str | None,
        typer.Option(
            "--unmatched-policy",
            help="tunnel | passthrough | deny: what happens to hosts no service matches.",
        ),
    ] = None,
    enforcement: Annotated[
        str | None,
        typer.Option(
            "--enforcement",
            help="enforce | dry-run | learn (dry-run forwards what would be denied, logs would_deny; "
            "learn also drafts one proposal per unknown host).",
        ),
    ] = None,
    rate_limits: Annotated[
        str | None,
        typer.Option(
            "--rate-limits",
            help="default | strict | off | server: this vault's proxy rate limits (server = --rate-limits).",
        ),
    ] = None,
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Show the vault's settings, or change them (step-up)."""
    name = resolve_vault(vault)[0]
    c = client()
    if unmatched_policy is None and enforcement is None and rate_limits is None:
        data = c.get(f"/v1/vaults/{seg(name)}")
    else:
        if unmatched_policy is not None:
            unmatched_policy = choice(unmatched_policy, POLICIES, "--unmatched-policy")
        if enforcement is not None:
            enforcement = choice(enforcement, ENFORCEMENTS, "--enforcement")
        if rate_limits is not None:
            rate_limits = choice(rate_limits, RATE_LIMIT_PROFILES, "--rate-limits")
        body: dict[str, Any] = {"password": step_up(password_stdin)}
        if unmatched_policy:
            body["unmatched_policy"] = unmatched_policy
        if enforcement:
            body["enforcement"] = enforcement
        if rate_limits:
            body["rate_limits"] = rate_limits
        data = c.patch(f"/v1/vaults/{seg(name)}", body)
    s, n = data.get("settings", {}), data.get("counts", {})
    out.data(
        data,
        f"vault {data.get('name', name)}\n  unmatched_policy: {s.get('unmatched_policy')}\n"
        f"  enforcement: {s.get('enforcement')}\n  rate_limits: {s.get('rate_limits')}\n"
        f"  services: {n.get('services')}\n"
        f"  credentials: {n.get('credentials')}",
    )


@vault_app.command("discover")
def discover(vault: VaultOpt = None) -> None:
    """What agents of this vault can reach (GET /v1/discover); nothing secret."""
    c = client()
    headers = {}
    if vault or not (c.token or "").startswith("av_sess_"):
        headers["X-Vault"] = resolve_vault(vault)[0]
    data = c.get("/v1/discover", headers=headers)
    if out.json_mode:
        out.data(data)
        return
    out.info(f"vault {data['vault']} (role {data['role']}, unmatched policy {data['unmatched_policy']})")
    out.table(
        data,
        data.get("services", []),
        ["name", "host", "port", "path", "methods", "auth_type", "enabled", "placeholders"],
    )
    out.info(f"credentials with a value: {', '.join(data.get('available_credentials', [])) or '-'}")
    out.info(f"propose new services: POST {data.get('proposals_url')}")


# ---- grants and sessions -------------------------------------------------------------------------------

grant_agent_app = typer.Typer(no_args_is_help=True, help="Agents granted on the vault.")
grant_user_app = typer.Typer(no_args_is_help=True, help="Users granted on the vault.")
session_app = typer.Typer(no_args_is_help=True, help="Session tokens of the vault (from vault run).")
vault_app.add_typer(grant_agent_app, name="agent")
vault_app.add_typer(grant_user_app, name="user")
vault_app.add_typer(session_app, name="session")


@grant_agent_app.command("list")
def agent_list(vault: VaultOpt = None) -> None:
    """Agents with a grant on the vault."""
    data = client().get(f"/v1/vaults/{seg(vault_name(vault))}/agents")
    out.table(data, data["agents"], ["name", "role"])


@grant_agent_app.command("add")
def agent_add(
    name: Annotated[str, typer.Argument()],
    vault: VaultOpt = None,
    role: Annotated[str, typer.Option("--role", help="proxy | member")] = "proxy",
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Grant an existing agent access to the vault (step-up)."""
    if role not in ("proxy", "member"):
        raise typer.BadParameter("agents may hold proxy or member", param_hint="--role")
    v = vault_name(vault)
    data = client().put(
        f"/v1/vaults/{seg(v)}/agents/{seg(name)}", {"password": step_up(password_stdin), "role": role}
    )
    out.data(data, f"agent {name} has role {role} on vault {v}")


@grant_agent_app.command("remove")
def agent_remove(
    name: Annotated[str, typer.Argument()], vault: VaultOpt = None, password_stdin: PasswordStdinOpt = False
) -> None:
    """Remove an agent's grant on the vault (step-up)."""
    v = vault_name(vault)
    client().delete(f"/v1/vaults/{seg(v)}/agents/{seg(name)}", {"password": step_up(password_stdin)})
    out.data({"removed": name, "vault": v}, f"agent {name} no longer has access to vault {v}")


@grant_user_app.command("list")
def user_list(vault: VaultOpt = None) -> None:
    """Users with a grant on the vault."""
    data = client().get(f"/v1/vaults/{seg(vault_name(vault))}/users")
    out.table(data, data["users"], ["email", "role"])


@grant_user_app.command("add")
def user_add(
    email: Annotated[str, typer.Argument()],
    vault: VaultOpt = None,
    role: Annotated[str, typer.Option("--role", help="proxy | member | admin")] = "member",
    password_stdin: PasswordStdinOpt = False,
) -> None:
    """Grant an existing user a role on the vault (step-up)."""
    if role not in ("proxy", "member", "admin"):
        raise typer.BadParameter("must be proxy, member or admin", param_hint="--role")
    check_email(email)
    v = vault_name(vault)
    data = client().put(
        f"/v1/vaults/{seg(v)}/users/{seg(email)}", {"password": step_up(password_stdin), "role": role}
    )
    out.data(data, f"user {email} has role {role} on vault {v}")


@grant_user_app.command("remove")
def user_remove(
    email: Annotated[str, typer.Argument()], vault: VaultOpt = None, password_stdin: PasswordStdinOpt = False
) -> None:
    """Remove a user's grant on the vault (step-up)."""
    v = vault_name(vault)
    client().delete(f"/v1/vaults/{seg(v)}/users/{seg(email)}", {"password": step_up(password_stdin)})
    out.data({"removed": email, "vault": v}, f"user {email} no longer has access to vault {v}")


@session_app.command("list")
def session_list(vault: VaultOpt = None) -> None:
    """Live session tokens of the vault (ids only; tokens are never shown again). `parent_id`: the
    session that minted it (revoking that one revokes this one too)."""
    data = client().get("/v1/sessions", params={"vault": vault_name(vault)})
    out.table(data, data["sessions"], ["id", "label", "actor", "parent_id", "created_at", "expires_at"])


@session_app.command("revoke")
def session_revoke(session_id: Annotated[int, typer.Argument(metavar="ID")], vault: VaultOpt = None) -> None:
    """Revoke a session token now, and every session it minted (their open connections are cut)."""
    client().delete(f"/v1/sessions/{session_id}")
    out.data({"revoked": session_id}, f"revoked session {session_id}")
