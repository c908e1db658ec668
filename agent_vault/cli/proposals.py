"""`vault proposal list | show | approve | reject` (SPEC §10, §11).

Approving enters the missing credential values here: from `--value-from-env KEY=VAR`,
`--value-from-file KEY=PATH`, or a hidden prompt per key on a terminal — never argv. The values go
straight into the approve request and are never printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent_vault.cli.common import (
    PasswordStdinOpt,
    VaultOpt,
    YesOpt,
    client,
    confirm,
    seg,
    step_up,
    vault_name,
)
from agent_vault.cli.output import inert, out
from agent_vault.cli.prompts import secret_value
from agent_vault.cli.vault import vault_app
from agent_vault.domain.names import check_key
from agent_vault.errors import Conflict, InvalidRequest

proposal_app = typer.Typer(no_args_is_help=True, help="Proposals from agents: review, approve, reject.")
vault_app.add_typer(proposal_app, name="proposal")

STATUSES = ("pending", "applied", "rejected", "expired", "draft")
IdArg = Annotated[int, typer.Argument(metavar="ID", help="Proposal id (per vault).")]


def _path(vault: str, pid: int | None = None) -> str:
    base = f"/v1/vaults/{seg(vault)}/proposals"
    return base if pid is None else f"{base}/{pid}"


@proposal_app.command("list")
def list_proposals(
    vault: VaultOpt = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending | applied | rejected | expired | draft")
    ] = None,
) -> None:
    """Proposals of the vault, oldest first (member)."""
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(
            "must be pending, applied, rejected, expired or draft", param_hint="--status"
        )
    data = client().get(_path(vault_name(vault)), params={"status": status} if status else None)
    cols = ["id", "status", "actor", "services", "credentials", "created_at"]
    out.table(data, data["proposals"], cols)


def _service_line(entry: dict[str, Any]) -> str:
    port = f":{entry['port']}" if entry.get("port") else ""
    auth = entry.get("auth") or {}
    keys = [str(v) for k, v in auth.items() if k in ("token", "key", "username", "password") and v]
    methods = ",".join(str(m) for m in entry.get("methods") or []) or "all methods"
    where = f"{entry.get('host')}{port}{entry.get('path', '/')}"
    return inert(f"{where} ({methods}) auth {auth.get('type')} {' '.join(keys)}".rstrip())


def describe(d: dict[str, Any]) -> str:
    """Human summary of a full proposal (what approving would change). Names only, never values.

    Almost all of it was written by the agent (message, names, descriptions, hosts): every such field
    goes through `inert`, so it can neither drive the terminal nor add a line of its own (a message
    with a newline must not be able to print a fake "services:" section)."""
    s = inert
    lines = [
        f"proposal {s(d['id'])} in vault {s(d['vault'])}: {s(d['status'])} "
        f"(approving needs {s(d['required_role'])})",
        f"  from {s(d['actor'])}, created {s(d['created_at'])}, expires {s(d['expires_at'])}",
    ]
    if d.get("message"):
        lines.append(f"  message: {s(d['message'])}")
    defs = {str(x["name"]): x for x in d.get("services", [])}
    marks = {"add": "+", "update": "~", "delete": "-", "create": "+"}
    if d["changes"]["services"]:
        lines.append("services:")
    for c in d["changes"]["services"]:
        detail = "" if c["effect"] == "delete" else ": " + _service_line(defs[c["name"]])
        lines.append(f"  {marks.get(c['effect'], '?')} {s(c['name'])} ({s(c['effect'])}){detail}")
    meta = {str(c["key"]): c for c in d.get("credentials", [])}
    if d["changes"]["credentials"] or d.get("missing_values"):
        lines.append("credentials:")
    for c in d["changes"]["credentials"]:
        m = meta.get(c["key"], {})
        extra = "".join(
            [
                f" - {s(m['description'])}" if m.get("description") else "",
                f" (obtain: {s(m['obtain'])})" if m.get("obtain") else "",
                "  [value needed]" if c["key"] in d.get("missing_values", []) else "",
            ]
        )
        lines.append(f"  {marks.get(c['effect'], '?')} {s(c['key'])} ({s(c['effect'])}){extra}")
    for key in d.get("missing_values", []):
        if key not in meta:
            lines.append(f"  {s(key)}: used by a proposed service  [value needed]")
    if d.get("reviewed_by"):
        note = f": {s(d['review_note'])}" if d.get("review_note") else ""
        lines.append(f"reviewed by {s(d['reviewed_by'])} at {s(d['reviewed_at'])}{note}")
    return "\n".join(lines)


@proposal_app.command("show")
def show(pid: IdArg, vault: VaultOpt = None) -> None:
    """Everything a proposal would change, and which values it still needs."""
    data = client().get(_path(vault_name(vault), pid))
    out.data(data, describe(data))


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or []:
        key, eq, ref = item.partition("=")
        if not eq or not key or not ref:
            raise typer.BadParameter(f"expected KEY={'VAR' if 'env' in flag else 'PATH'}", param_hint=flag)
        pairs[check_key(key)] = ref
    return pairs


def gather_values(
    missing: list[str], from_env: dict[str, str], from_file: dict[str, str], password_stdin: bool
) -> dict[str, str]:
    """Values for the approval: env/file pairs first, then a hidden prompt per remaining missing key."""
    values: dict[str, str] = {}
    for key, var in from_env.items():
        values[key] = secret_value(key, stdin=False, from_env=var, from_file=None)
    for key, path in from_file.items():
        if key in values:
            raise InvalidRequest(f"{key} is given by both --value-from-env and --value-from-file")
        values[key] = secret_value(key, stdin=False, from_env=None, from_file=Path(path))
    rest = [k for k in missing if k not in values]
    if rest and (password_stdin or not sys.stdin.isatty()):
        raise InvalidRequest(
            f"values needed for: {', '.join(rest)}",
            hint="Pass --value-from-env KEY=VAR or --value-from-file KEY=PATH for each "
            "(without a terminal, or when stdin carries the password, values cannot be prompted).",
        )
    for key in rest:
        values[key] = secret_value(key, stdin=False, from_env=None, from_file=None)
    return values


@proposal_app.command("approve")
def approve(
    pid: IdArg,
    vault: VaultOpt = None,
    note: Annotated[str | None, typer.Option("--note", help="A note kept with the review.")] = None,
    yes: YesOpt = False,
    password_stdin: PasswordStdinOpt = False,
    value_from_env: Annotated[
        list[str] | None,
        typer.Option("--value-from-env", metavar="KEY=VAR", help="Take KEY's value from $VAR (repeatable)."),
    ] = None,
    value_from_file: Annotated[
        list[str] | None,
        typer.Option(
            "--value-from-file", metavar="KEY=PATH", help="Read KEY's value from PATH (repeatable)."
        ),
    ] = None,
) -> None:
    """Apply a pending proposal (step-up); prompts (hidden) for every credential value it still needs."""
    envs, files = _pairs(value_from_env, "--value-from-env"), _pairs(value_from_file, "--value-from-file")
    v = vault_name(vault)
    c = client()
    data = c.get(_path(v, pid))
    if data["status"] not in ("pending", "draft"):
        raise Conflict(f"proposal {pid} is {data['status']}, not pending")
    if not out.json_mode:
        out.info(describe(data))
    values = gather_values(list(data.get("missing_values", [])), envs, files, password_stdin)
    confirm(f"Approve proposal {pid} in vault {v}?", yes)
    body: dict[str, Any] = {"password": step_up(password_stdin), "credentials": values}
    if note:
        body["note"] = note
    result = c.post(f"{_path(v, pid)}/approve", body)
    del values, body
    out.data(result, f"proposal {pid} applied in vault {v}")


@proposal_app.command("reject")
def reject(
    pid: IdArg,
    vault: VaultOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why; the agent reads it.")] = None,
) -> None:
    """Reject a pending proposal; the reason is shown to the agent as review_note."""
    v = vault_name(vault)
    result = client().post(f"{_path(v, pid)}/reject", {"reason": reason} if reason else {})
    out.data(result, f"proposal {pid} rejected in vault {v}")
