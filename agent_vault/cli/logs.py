"""`agent-vault logs …`: read, follow, verify and export the audit log (SPEC §10, §12).

* `logs [filters]` - the vault's newest records as a table (`--json`: one JSON object per line).
* `logs follow [filters]` - prints new records as they arrive (polls `after=`); Ctrl-C exits 0.
* `logs verify [--expect-head HASH]` - owner: verifies the whole hash chain. With the server running it
  asks the server (`POST /v1/audit/verify`, which first flushes the audit queue). When the API is not
  reachable (server stopped) - or with `--offline` - it opens `<home>/agent-vault.db` READ-ONLY and
  verifies it locally against `<home>/audit.head`; that needs read access to the server's home, not a login.
  Exit 0 and `ok: N records, head <hash>`, or exit 1 naming the first bad seq and the reason.
* `logs export [-o FILE.jsonl] [--since …]` - owner: every record with its hash, one JSON object per line.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from agent_vault.cli import G, app, choice
from agent_vault.cli.client import ApiError, Client
from agent_vault.cli.common import VaultOpt, client, exit_with, seg, vault_name
from agent_vault.cli.durations import parse_duration
from agent_vault.cli.output import inert, json_text, out
from agent_vault.errors import AgentVaultError, DatabaseUnreadable, InvalidRequest, NotInitialised
from agent_vault.timestamps import utc_ts

if TYPE_CHECKING:  # the ORM loads only for `logs verify --offline` (~0.3 s of every command)
    from sqlalchemy import Engine

    from agent_vault.audit import VerifyResult

logs_app = typer.Typer(no_args_is_help=False, help="Read, follow, verify and export the audit log.")
app.add_typer(logs_app, name="logs")

PAGE = 500  # the API's maximum for /v1/vaults/{v}/logs
EXPORT_PAGE = 1000  # the API's maximum for /v1/audit

SinceOpt = Annotated[
    str | None, typer.Option(help="Only records newer than this: 90s, 15m, 1h, 7d or ISO time.")
]
AgentOpt = Annotated[str | None, typer.Option(help="Only this agent (and its sessions).")]
ServiceOpt = Annotated[str | None, typer.Option(help="Only requests matched to this service.")]
HostOpt = Annotated[str | None, typer.Option(help="Only requests to this host (exact, any case).")]
#: The decisions a proxy record carries (audit.chain.DECISIONS, not imported: the CLI starts lighter).
DECISIONS = ("injected", "passthrough", "unmatched_passthrough", "tunnel", "denied", "would_deny", "error")
DecisionOpt = Annotated[
    str | None,
    typer.Option(help="injected, passthrough, unmatched_passthrough, tunnel, denied, would_deny or error."),
]
StatusOpt = Annotated[str | None, typer.Option(help="Status class 4xx, exact code 404, or err.")]


# -- helpers -------------------------------------------------------------------------------------


def parse_since(text: str) -> str:
    """A duration ago (`300`, `90s`, `15m`, `1h`, `7d`) or an ISO-8601 time -> ISO-8601 UTC."""
    try:
        return utc_ts(datetime.now(UTC) - timedelta(seconds=parse_duration(text)))
    except InvalidRequest:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--since {text[:40]!r} is neither a duration (90s, 15m, 1h, 7d) nor an ISO time"
        ) from None
    return utc_ts(when)


def _filters(
    agent: str | None,
    service: str | None,
    decision: str | None,
    status: str | None,
    since: str | None,
    host: str | None = None,
) -> dict[str, Any]:
    params = {
        "agent": agent,
        "service": service,
        "host": host,
        "decision": choice(decision, DECISIONS, "--decision") if decision is not None else None,
        "status": status,
        "since": parse_since(since) if since else None,
    }
    return {k: v for k, v in params.items() if v is not None}


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    """One record as table cells (names only: records never hold values)."""
    kind = str(rec.get("kind", ""))
    if kind == "proxy.refused":  # anonymous refusals, summarised per cause and window
        methods = rec.get("methods") or {}
        hosts = rec.get("hosts") or []
        target = f"{rec.get('count')} x " + ", ".join(f"{m} {n}" for m, n in sorted(methods.items()))
        target += f" to {', '.join(map(str, hosts[:3]))}" if hosts else ""
        what = f"refused ({rec.get('error')})"
        keys = []
    elif kind.startswith("proxy."):
        url = f"{rec.get('scheme') or ''}://{rec.get('host')}:{rec.get('port')}{rec.get('path') or ''}"
        target = f"{rec.get('method') or ''} {url}"
        what = str(rec.get("decision") or "")
        if rec.get("error"):
            what += f" ({rec['error']})"
        elif rec.get("would_deny_code"):
            what += f" ({rec['would_deny_code']})"
        keys = sorted(set(rec.get("injected_keys") or []) | set(rec.get("substituted_keys") or []))
    else:
        target = str(rec.get("target") or "")
        what = kind
        keys = []
    return {
        "seq": rec.get("seq"),
        "time": str(rec.get("ts", ""))[:23].replace("T", " "),
        "actor": rec.get("actor"),
        "what": what,
        "target": target.strip(),
        "status": rec.get("status"),
        "service": rec.get("service"),
        "keys": keys or None,
    }


WIDE = 120  # from this console width on: full times, full actors, service and keys
SESSION_KINDS = ("session.",)  # `vault run` bookkeeping: one create and one revoke per run
AllOpt = Annotated[
    bool, typer.Option("--all", help="Also show session bookkeeping records (session.create/revoke).")
]


def _visible(rec: dict[str, Any], show_all: bool) -> bool:
    return show_all or not str(rec.get("kind", "")).startswith(SESSION_KINDS)


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells, an ellipsis marking the cut."""
    from rich.cells import cell_len, set_cell_size  # here: the server process imports this module

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "\u2026"[:width]
    return set_cell_size(text, width - 1) + "\u2026"


def _short_actor(actor: str) -> str:
    """`user:a@b.c` -> `a@b.c`, `agent:bot` -> `bot`, `session:12:agent:bot` -> `s12:bot`."""
    if actor.startswith("session:"):
        _, sid, _, rest = [*actor.split(":", 3), "", "", ""][:4]
        return f"s{sid}:{rest or '?'}"
    return actor.split(":", 1)[1] if ":" in actor else actor


def _width() -> int:
    return max(40, int(out.console.width))


def _lines(records: list[dict[str, Any]], width: int | None = None) -> list[str]:
    """One line per record, each at most `width` cells. Paths, hosts and methods are the agent's: each
    field is made inert (newlines included) before it is measured or cut, so a record can neither drive
    the terminal nor forge a second line. Compact below WIDE columns: `seq HH:MM:SS actor what target
    status`; wider terminals get the full time and actor, the service and the keys."""
    from rich.cells import cell_len

    width = _width() if width is None else width
    wide = width >= WIDE
    cells: list[tuple[str, str, str, str, str, str]] = []
    for rec in records:
        r = _row(rec)
        time_ = r["time"][:19] if wide else r["time"][11:19]
        actor = str(r["actor"]) if wide else _short_actor(str(r["actor"]))
        tail = [] if r["status"] is None else [f"{r['status']}" if not wide else f"-> {r['status']}"]
        if wide and r["service"]:
            tail.append(f"[{r['service']}]")
        if wide and r["keys"]:
            tail.append("keys=" + ",".join(r["keys"]))
        cells.append(
            (
                inert(r["seq"]),
                inert(time_),
                _fit(inert(actor), 40 if wide else 14),
                _fit(inert(r["what"]), 40 if wide else 18),
                inert(r["target"]),
                inert("  ".join(tail) if wide else " ".join(tail)),
            )
        )
    sep = "  " if wide else " "
    cols = [max((cell_len(c[i]) for c in cells), default=0) for i in range(4)]
    lines = []
    for c in cells:
        head = sep.join([c[0].rjust(cols[0])] + [c[i] + " " * (cols[i] - cell_len(c[i])) for i in (1, 2, 3)])
        status = c[5]
        room = width - cell_len(head) - len(sep) - (cell_len(status) + len(sep) if status else 0)
        line = head + sep + _fit(c[4], max(room, 1)) + (sep + status if status else "")
        lines.append(_fit(line.rstrip(), width))
    return lines


def _emit_lines(records: list[dict[str, Any]]) -> None:
    if out.json_mode:
        for rec in records:
            out.json_line(rec)
        return
    for line in _lines(records):
        out.line(line)


# -- logs ----------------------------------------------------------------------------------------


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    vault: VaultOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest records.")] = 50,
    agent: AgentOpt = None,
    service: ServiceOpt = None,
    host: HostOpt = None,
    decision: DecisionOpt = None,
    status: StatusOpt = None,
    show_all: AllOpt = False,
) -> None:
    """Show the vault's newest records, one line each (member role on the vault).

    Session bookkeeping (the session.create/revoke records of every `vault run`) is hidden unless --all,
    with --json too. The layout follows the terminal width (COLUMNS): compact at 80 columns."""
    if ctx.invoked_subcommand is not None:
        return
    name = vault_name(vault)
    api = client()
    params = _filters(agent, service, decision, status, since, host)
    records: list[dict[str, Any]] = []
    before: int | None = None
    hidden = 0
    while len(records) < limit:
        page_params = {**params, "limit": min(PAGE, limit - len(records))}
        if before is not None:
            page_params["before"] = before
        page = api.get(f"/v1/vaults/{seg(name)}/logs", params=page_params)
        shown = [r for r in page["logs"] if _visible(r, show_all)]
        hidden += len(page["logs"]) - len(shown)
        records = shown + records
        before = page.get("next_cursor")
        if before is None:
            break
    records = records[-limit:]
    if out.json_mode:
        _emit_lines(records)
        return
    if not records:
        out.info(f"no records in vault {name} match")
        return
    _emit_lines(records)
    if hidden:
        out.info(f"({hidden} session record(s) hidden; --all shows them)")


@logs_app.command("follow")
def follow(
    vault: VaultOpt = None,
    since: SinceOpt = None,
    agent: AgentOpt = None,
    service: ServiceOpt = None,
    host: HostOpt = None,
    decision: DecisionOpt = None,
    status: StatusOpt = None,
    backlog: Annotated[int, typer.Option(min=0, max=PAGE, help="Older records to print first.")] = 10,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    max_seconds: Annotated[float | None, typer.Option(hidden=True)] = None,
    show_all: AllOpt = False,
) -> None:
    """Print new records as they arrive (polls the server); Ctrl-C to stop. Session records: --all."""
    name = vault_name(vault)
    api = client()
    params = _filters(agent, service, decision, status, since, host)
    path = f"/v1/vaults/{seg(name)}/logs"
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        first = api.get(path, params={**params, "limit": max(backlog, 1)})
        shown = first["logs"][-backlog:] if backlog else []
        _emit_lines([r for r in shown if _visible(r, show_all)])
        seen = [int(r["seq"]) for r in first["logs"]]
        cursor = max([int(first["latest_seq"]), *seen])
        out.info(f"following vault {name} after seq {cursor} (Ctrl-C to stop)")
        while deadline is None or time.monotonic() < deadline:
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
            while True:
                page = api.get(path, params={**params, "after": cursor, "limit": PAGE})
                _emit_lines([r for r in page["logs"] if _visible(r, show_all)])
                cursor = int(page["next_cursor"])
                if len(page["logs"]) < PAGE:
                    break
    except KeyboardInterrupt:
        return


# -- verify --------------------------------------------------------------------------------------


def _readonly_engine(db: Path) -> Engine:
    """The DB opened read-only (WAL still read, so records committed before a crash count)."""
    from sqlalchemy import create_engine

    uri = db.resolve().as_uri() + "?mode=ro"
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))


def verify_offline(home: Path, expect_head: str | None) -> VerifyResult:
    """Verify `<home>/agent-vault.db` directly (server stopped), read-only, against `<home>/audit.head`."""
    db = home / "agent-vault.db"
    if not db.is_file():
        if os.environ.get("DATABASE_URL"):  # PostgreSQL: the chain is checked through a running server
            raise NotInitialised(
                f"no SQLite database at {db}, and DATABASE_URL is set",
                hint="With PostgreSQL the chain is verified through a server: start one (any replica) and "
                "run 'agent-vault logs verify' again.",
            )
        raise NotInitialised(
            f"no database at {db}", hint="Pass --home (or set AGENT_VAULT_HOME) to the server home."
        )
    from agent_vault.audit import verify_db

    engine = _readonly_engine(db)
    try:
        return verify_db(engine, home / "audit.head", expect_head)
    except Exception as exc:  # sqlite3/SQLAlchemy errors: report the type, never parameters
        raise DatabaseUnreadable(f"cannot read the audit log in {db} ({type(exc).__name__})") from None
    finally:
        engine.dispose()


def _server_reachable(api: Client) -> bool:
    try:
        api.get("/health", auth=False)
    except ApiError:
        return True  # something answers: let the real request report the problem
    except AgentVaultError:
        return False
    return True


@logs_app.command("verify")
def verify(
    expect_head: Annotated[
        str | None, typer.Option(help="A head hash noted earlier; it must be in the chain.")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Read <home>/agent-vault.db directly even if the server runs.")
    ] = False,
) -> None:
    """Owner: recompute every hash; exit 1 naming the first bad record (works with the server stopped)."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise typer.BadParameter("must be a 64-character lowercase hex hash", param_hint="--expect-head")
    api = client()
    if not offline and _server_reachable(api):
        result: dict[str, Any] = api.post(
            "/v1/audit/verify", {"expect_head": expect_head} if expect_head else {}
        )
        where = "server"
    else:
        r = verify_offline(G.home, expect_head)
        result = {"ok": r.ok, "checked": r.checked, "head": r.head}
        if not r.ok:
            result |= {"first_bad_seq": r.first_bad_seq, "reason": r.reason}
        where = "offline"
        out.info(f"offline: verified {G.home / 'agent-vault.db'} directly (read-only)")
    result["mode"] = where
    if result["ok"]:
        out.data(result, f"ok: {result['checked']} records, head {result['head']}")
        return
    seq = result.get("first_bad_seq")
    at = f"seq {seq}" if seq is not None else "the chain head"
    out.data(
        result,
        f"audit chain BROKEN at {at}: {result.get('reason')} "
        f"({result['checked']} records verified before it)",
    )
    exit_with(1)


# -- export --------------------------------------------------------------------------------------


def _open_output(path: Path) -> TextIO:
    """The export file, created 0600 (audit records name agents, users and hosts)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8")


@logs_app.command("export")
def export(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write JSON lines here (default stdout).")
    ] = None,
    since: SinceOpt = None,
) -> None:
    """Owner: every record with its hash, one JSON object per line, oldest first."""
    api = client()
    params: dict[str, Any] = {"limit": EXPORT_PAGE}
    if since:
        params["since"] = parse_since(since)
    cursor, count = 0, 0
    f = _open_output(output) if output is not None else None
    try:
        while True:
            page = api.get("/v1/audit", params={**params, "after_seq": cursor})["records"]
            for rec in page:
                if f is None:
                    out.json_line(rec, sort_keys=True)
                else:
                    f.write(json_text(rec, sort_keys=True, ensure_ascii=False) + "\n")
            count += len(page)
            if len(page) < EXPORT_PAGE:
                break
            cursor = int(page[-1]["seq"])
    finally:
        if f is not None:
            f.close()
    if output is not None:
        out.info(f"exported {count} records to {output}")
