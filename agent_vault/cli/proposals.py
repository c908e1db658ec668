"""`vault proposal list | show | approve | reject` (SPEC §10, §11).

Approving enters the missing credential values here: from `--value-from-env KEY=VAR`,
`--value-from-file KEY=PATH`, or a hidden prompt per key on a terminal — never argv. The values go
straight into the approve request and are never printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent_vault.cli.client import Client
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


def _agent_token(c: Client) -> bool:
    """Agent and session tokens read proposals on the agent-facing routes (SPEC §8: their own at proxy
    role, the vault's at member), never the admin ones."""
    return (c.token or "").startswith(("av_agt_", "av_sess_"))


def _agent_headers(c: Client, vault: str | None) -> dict[str, str]:
    """X-Vault for the agent-facing routes; a session token carries its vault unless one is named."""
    if vault or not (c.token or "").startswith("av_sess_"):
        return {"X-Vault": vault_name(vault)}
    return {}


@proposal_app.command("list")
def list_proposals(
    vault: VaultOpt = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending | applied | rejected | expired | draft")
    ] = None,
) -> None:
    """Proposals of the vault, oldest first (member; with an agent token, the agent's own)."""
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(
            "must be pending, applied, rejected, expired or draft", param_hint="--status"
        )
    c = client()
    params = {"status": status} if status else None
    if _agent_token(c):  # SPEC §8: an agent reads its own proposals at proxy role
        data = c.get("/v1/proposals", params=params, headers=_agent_headers(c, vault))
        out.table(data, data["proposals"], ["id", "status", "message", "created_at"])
        return
    data = c.get(_path(vault_name(vault)), params=params)
    cols = ["id", "status", "actor", "services", "credentials", "created_at"]
    out.table(data, data["proposals"], cols)


#: How a field of a service definition reads in a review; fields not listed print as compact JSON.
_FIELDS = (
    "host",
    "port",
    "path",
    "methods",
    "auth",
    "allow_http",
    "redact_response",
    "forward_set_cookie",
    "substitutions",
    "enabled",
    "approval",
    "quota",
    "token_budget",
    "description",
)
#: What a new service leaves out of its one-line summary when the field has this value.
_QUIET = {
    "allow_http": False,
    "redact_response": None,
    "forward_set_cookie": None,
    "substitutions": {"keys": None, "in": ["header", "path", "query"]},
    "enabled": True,
    "approval": None,
    "quota": None,
    "token_budget": None,
    "description": "",
}


def _value(field: str, v: Any) -> str:
    """One field's value in words: `port: null` is any port, `methods: null` every method."""
    if field == "port":
        return "any port" if v is None else str(v)
    if field == "methods":
        return "all methods" if not v else ",".join(str(m) for m in v)
    if field == "redact_response" and v is None:
        return "default (on when it sends credentials)"
    if field == "forward_set_cookie" and v is None:
        return "default (off when it sends credentials)"
    if v is True or v is False:
        return "yes" if v else "no"
    if v is None:
        return "none"
    if isinstance(v, str):
        return v or '""'
    return json.dumps(v, separators=(", ", ": "))


def _fields_of(d: dict[str, Any]) -> list[str]:
    rest = [k for k in d if k not in ("action", "name") and k not in _FIELDS]
    return [*(k for k in _FIELDS if k in d), *rest]


def _service_line(entry: dict[str, Any]) -> str:
    """`host H, any port, path /, all methods, auth bearer KEY` (key names only: never a value)."""
    auth = entry.get("auth") or {}
    keys = [str(v) for k, v in auth.items() if k in ("token", "key", "username", "password") and v]
    parts = [
        f"host {entry.get('host')}",
        "any port" if entry.get("port") is None else f"port {entry.get('port')}",
        f"path {entry.get('path', '/')}",
        _value("methods", entry.get("methods")),
        f"auth {auth.get('type')} {' '.join(keys)}".rstrip(),
    ]
    return inert(", ".join(parts))


def _service_details(c: dict[str, Any], after: dict[str, Any] | None) -> list[str]:
    """The lines under a service change: every field an update changes (before -> after), the
    non-default settings of a new service, what a delete removes."""
    s = inert
    before = c.get("before")
    if c["effect"] == "update" and isinstance(before, dict) and after is not None:
        keys = [k for k in _fields_of({**before, **after}) if before.get(k) != after.get(k)]
        if not keys:
            return ["      (no field changes)"]
        return [f"      {s(k)}: {s(_value(k, before.get(k)))} -> {s(_value(k, after.get(k)))}" for k in keys]
    shown = after if after is not None else before
    if not isinstance(shown, dict):
        return []
    return [
        f"      {s(k)}: {s(_value(k, shown.get(k)))}"
        for k in _fields_of(shown)
        if k not in ("host", "port", "path", "methods", "auth") and shown.get(k) != _QUIET.get(k)
    ]


def describe(d: dict[str, Any]) -> str:
    """Human summary of a full proposal (what approving would change). Names only, never values.

    An update lists every field it changes (before -> after); each server warning is a `warning:` line
    and each item the vault has overtaken an `OUT OF DATE:` line. Almost all of it was written by the
    agent (message, names, descriptions, hosts): every such field goes through `inert`, so it can neither
    drive the terminal nor add a line of its own (a message with a newline must not be able to print a
    fake "services:" section). Also takes the agent-facing view (no `changes`: the definitions as filed)."""
    s = inert
    role = f" (approving needs {s(d['required_role'])})" if d.get("required_role") else ""
    lines = [f"proposal {s(d['id'])} in vault {s(d['vault'])}: {s(d['status'])}{role}"]
    who = f"from {s(d['actor'])}, " if d.get("actor") else ""
    lines.append(f"  {who}created {s(d['created_at'])}, expires {s(d['expires_at'])}")
    if d.get("message"):
        lines.append(f"  message: {s(d['message'])}")
    for reason in d.get("out_of_date") or []:
        lines.append(
            f"OUT OF DATE: {s(reason)}; approving would fail: reject it "
            f"('agent-vault vault proposal reject {s(d['id'])} --vault {s(d['vault'])}')"
        )
    defs = {str(x["name"]): x for x in d.get("services", []) if x.get("action", "set") != "delete"}
    marks = {"add": "+", "update": "~", "delete": "-", "create": "+", "set": "*"}
    changes = d.get("changes") or {
        "services": [{"name": x["name"], "effect": x.get("action", "set")} for x in d.get("services", [])],
        "credentials": [
            {"key": x["key"], "effect": x.get("action", "set")} for x in d.get("credentials", [])
        ],
    }
    if changes["services"]:
        lines.append("services:")
    for c in changes["services"]:
        after = defs.get(str(c["name"])) if c["effect"] != "delete" else None
        head = "" if after is None else ": " + _service_line(after)
        if c["effect"] == "delete" and isinstance(c.get("before"), dict):
            head = ": removes " + _service_line(c["before"])
        lines.append(f"  {marks.get(c['effect'], '?')} {s(c['name'])} ({s(c['effect'])}){head}")
        if c.get("out_of_date"):
            lines.append(f"    OUT OF DATE: {s(c['out_of_date'])}")
        for w in c.get("warnings") or []:
            lines.append(f"    warning: {s(c['name'])}: {s(w)}")
        if d["status"] in ("pending", "draft"):  # `before` is the vault now: a decided one has no diff
            lines += _service_details(c, after)
    meta = {str(c["key"]): c for c in d.get("credentials", [])}
    missing = d.get("missing_values") or []
    if changes["credentials"] or missing:
        lines.append("credentials:")
    for c in changes["credentials"]:
        m = meta.get(c["key"], {})
        extra = "".join(
            [
                f" - {s(m['description'])}" if m.get("description") else "",
                f" (obtain: {s(m['obtain'])})" if m.get("obtain") else "",
                "  [value needed]" if c["key"] in missing else "",
            ]
        )
        lines.append(f"  {marks.get(c['effect'], '?')} {s(c['key'])} ({s(c['effect'])}){extra}")
        if c.get("out_of_date"):
            lines.append(f"    OUT OF DATE: {s(c['out_of_date'])}")
    for key in missing:
        if key not in meta:
            lines.append(f"  {s(key)}: used by a proposed service  [value needed]")
    if d.get("reviewed_by") or d.get("review_note"):
        by = f" by {s(d['reviewed_by'])}" if d.get("reviewed_by") else ""
        note = f": {s(d['review_note'])}" if d.get("review_note") else ""
        lines.append(f"reviewed{by} at {s(d.get('reviewed_at'))}{note}")
    return "\n".join(lines)


def _style(line: str) -> str | None:
    text = line.lstrip()
    if text.startswith("OUT OF DATE:"):
        return "bold red"
    if text.startswith("warning:"):
        return "bold yellow"
    return None


def print_review(d: dict[str, Any], *, stderr: bool = False) -> None:
    """`describe(d)` on the terminal, warnings and out-of-date lines styled (plain when piped)."""
    if out.quiet:
        return
    from rich.text import Text

    console = out.err_console if stderr else out.console
    for line in describe(d).splitlines():
        console.print(Text(inert(line, keep_lines=True), style=_style(line) or ""))


@proposal_app.command("show")
def show(pid: IdArg, vault: VaultOpt = None) -> None:
    """Everything a proposal would change, and which values it still needs (an agent: its own)."""
    c = client()
    if _agent_token(c):
        data = c.get(f"/v1/proposals/{pid}", headers=_agent_headers(c, vault))
    else:
        data = c.get(_path(vault_name(vault), pid))
    if out.json_mode:
        out.data(data)
        return
    print_review(data)


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
        print_review(data, stderr=True)
    if data.get("out_of_date"):
        raise Conflict(
            f"proposal {pid} is out of date: {'; '.join(str(r) for r in data['out_of_date'])}",
            hint=f"Reject it: 'agent-vault vault proposal reject {pid} --vault {v}'.",
        )
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
