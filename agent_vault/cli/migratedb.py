"""`agent-vault migrate-db`: move an instance from SQLite into an empty PostgreSQL database (server stopped).

Values stay sealed (store/copy.py copies bytes, never decrypts), so no master password is needed. The
source is the home's database unless --from names another SQLite file; a home from before the instance
row existed gets its row (identity, sealed CA) first, so the target holds the whole instance.
Passwordless instances are refused: their key file is local, the target could not be unlocked.
"""

from __future__ import annotations

from typing import Annotated

import typer

from agent_vault.cli import G, app
from agent_vault.cli.output import out
from agent_vault.config import env_settings
from agent_vault.errors import InvalidRequest


@app.command("migrate-db")
def migrate_db(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="postgresql://USER@HOST:PORT/DB (an empty database; a password goes in PGPASSWORD or "
            "~/.pgpass, not on the command line).",
        ),
    ],
    source: Annotated[
        str | None, typer.Option("--from", help="sqlite:///PATH (default: the home's agent-vault.db).")
    ] = None,
) -> None:
    """Copy an instance into an empty PostgreSQL database (server stopped; values stay sealed).

    All or nothing: one transaction on the target. Ids and the audit chain are kept (`logs verify`
    passes against the target). Then start replicas with `agent-vault server --database-url URL`."""
    from agent_vault.home import Home
    from agent_vault.instance import PG_PASSWORDLESS, open_instance
    from agent_vault.lifecycle import ServerLock
    from agent_vault.store import Store
    from agent_vault.store.copy import copy_all
    from agent_vault.store.engine import is_postgres, redact_url

    if source is not None and not source.startswith("sqlite:///"):
        raise typer.BadParameter("must be sqlite:///PATH", param_hint="--from")
    if not is_postgres(to):
        raise typer.BadParameter("must be postgresql://USER@HOST:PORT/DB", param_hint="--to")
    settings = env_settings(home=G.home, database_url=source or f"sqlite:///{Home(G.home).db_path}")
    with ServerLock(Home(settings.home)):  # no server of this home writes while we copy
        src, row = open_instance(settings)
        try:
            if row.key_mode == "passwordless":
                raise InvalidRequest(PG_PASSWORDLESS, hint="First: agent-vault master-password set")
            dst = Store(to)
            try:
                counts = copy_all(src, dst)
            finally:
                dst.close()
        finally:
            src.close()
    total, audit = sum(counts.values()), counts.get("audit_events", 0)
    out.data(
        {"instance_id": row.instance_id, "rows": counts, "target": redact_url(to)},
        f"copied instance {row.instance_id[:8]} ({total} rows, {audit} audit records) "
        f"into {redact_url(to)}; start it with 'agent-vault server --database-url URL'",
    )
