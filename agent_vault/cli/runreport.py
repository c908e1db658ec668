"""What `vault run` says after its child exits: each host the child reached that matched no service of
the vault (nothing injected there), read from the audit log once the server has settled the session."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent_vault.cli import G
from agent_vault.cli.client import Client
from agent_vault.cli.common import seg
from agent_vault.cli.output import out
from agent_vault.errors import AgentVaultError

if TYPE_CHECKING:
    from agent_vault.cli.run import RunSession

UNMATCHED = ("tunnel", "unmatched_passthrough")  # the proxy let the request through, injecting nothing
MAX_HOSTS_REPORTED = 10
SETTLE_SECONDS = 0.5  # without the settle call (older server): the audit writer commits every 0.2 s
SETTLE_WAIT_SECONDS = 3.0  # the most the server waits for the child's connections to close


def acting_client(c: Client, session: RunSession) -> Client:
    """The client that may act on the session: `c`, or for a child session (minted by an outer
    session, which may not act on it) the session's own token."""
    return Client(c.addr, G.home, token=session.token) if session.child else c


def latest_seq(c: Client, vault: str) -> int | None:
    """The audit log's newest seq before the child runs (None: this login cannot read the vault's log)."""
    try:
        return int(c.get(f"/v1/vaults/{seg(vault)}/logs", params={"limit": 1})["latest_seq"])
    except (AgentVaultError, KeyError, TypeError, ValueError):
        return None


def unmatched_hosts(c: Client, session: RunSession, after: int) -> list[str]:
    """Hosts this session's requests reached without matching a service, first seen first."""
    prefix = f"session:{session.session_id}:"
    hosts: list[str] = []
    cursor = after
    for _ in range(20):  # at most 10 000 records
        page = c.get(
            f"/v1/vaults/{seg(session.vault)}/logs",
            params={"after": cursor, "kind": "proxy.*", "limit": 500},
        )
        for rec in page["logs"]:
            if (
                str(rec.get("actor", "")).startswith(prefix)
                and rec.get("decision") in UNMATCHED
                and rec.get("service") is None
                and rec.get("host")
                and str(rec["host"]) not in hosts
            ):
                hosts.append(str(rec["host"]))
        if len(page["logs"]) < 500:
            break
        cursor = int(page["next_cursor"])
    return hosts


def report_unmatched(c: Client, session: RunSession, start_seq: int | None) -> None:
    """Once, after the child exits: one stderr line per host it reached that matched no service."""
    if session.session_id is None or start_seq is None:
        return
    _settle(c, session)
    try:
        hosts = unmatched_hosts(c, session, start_seq)
    except (AgentVaultError, KeyError, TypeError, ValueError):
        return
    for host in hosts[:MAX_HOSTS_REPORTED]:
        out.info(
            f"agent-vault: the command reached {host}, which no service of vault {session.vault} matches "
            "(nothing injected); add one with 'agent-vault vault service add'"
        )
    if len(hosts) > MAX_HOSTS_REPORTED:
        out.info(f"agent-vault: ... and {len(hosts) - MAX_HOSTS_REPORTED} more (see 'agent-vault logs')")


def _settle(c: Client, session: RunSession) -> None:
    """Wait until the server has closed the child's proxy connections and committed their audit
    records (a tunnel's record is written when it closes); a fixed pause if the server cannot say."""
    try:
        acting_client(c, session).post(
            f"/v1/sessions/{session.session_id}/settle", {"wait_seconds": SETTLE_WAIT_SECONDS}
        )
    except AgentVaultError:
        time.sleep(SETTLE_SECONDS)
