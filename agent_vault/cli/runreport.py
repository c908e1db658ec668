"""What `vault run` says after its child exits: each host the child reached that matched no service of
the vault (nothing injected there), read from the audit log once the server has settled the session."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent_vault.cli import G
from agent_vault.cli.client import Client
from agent_vault.cli.common import seg
from agent_vault.cli.output import out
from agent_vault.errors import AgentVaultError

if TYPE_CHECKING:
    from agent_vault.cli.run import RunSession

UNMATCHED = ("tunnel", "unmatched_passthrough")  # the proxy let the request through, injecting nothing
WOULD_DENY_UNMATCHED = "service_not_allowed"  # policy deny under dry-run/learn: let through, logged
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


def host_pattern_covers(pattern: str, host: str) -> bool:
    """Whether a service host (`api.example.com`, `*.example.com`: one more label) names `host`."""
    if pattern.startswith("*."):
        return host.partition(".")[2] == pattern[2:]
    return pattern == host


def target_label(host: str, port: object, service_hosts: Sequence[str]) -> str:
    """How to name what the child reached: the host alone, or host:port when a service of the vault is
    on that host (then the port, or the path, is what matched no service: the host alone would read as
    "no service for this host" and contradict the service list)."""
    if not isinstance(port, int) or not any(host_pattern_covers(p, host) for p in service_hosts):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unmatched(rec: dict[str, Any]) -> bool:
    decision = rec.get("decision")
    return decision in UNMATCHED or (
        decision == "would_deny" and rec.get("would_deny_code") == WOULD_DENY_UNMATCHED
    )


def api_target(addr: str) -> tuple[str, int] | None:
    """(host, port) of the API address the child was given (AGENT_VAULT_ADDR), None if it has none."""
    try:
        parts = urlsplit(addr)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def unmatched_hosts(
    c: Client, session: RunSession, after: int, service_hosts: Sequence[str] = ()
) -> list[str]:
    """Hosts (host:port where a service is on the host: `target_label`) this session's requests
    reached without matching a service, first seen first. The child's own calls to agent-vault's API
    (through the proxy when loopback is not in its NO_PROXY: proxy/ownapi.py) are not reported."""
    prefix = f"session:{session.session_id}:"
    own_api = api_target(c.addr)
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
                and _unmatched(rec)
                and rec.get("service") is None
                and rec.get("host")
                and (rec.get("host"), rec.get("port")) != own_api
            ):
                label = target_label(str(rec["host"]), rec.get("port"), service_hosts)
                if label not in hosts:
                    hosts.append(label)
        if len(page["logs"]) < 500:
            break
        cursor = int(page["next_cursor"])
    return hosts


def report_unmatched(
    c: Client, session: RunSession, start_seq: int | None, service_hosts: Sequence[str] = ()
) -> None:
    """Once, after the child exits: one stderr line per host it reached that matched no service
    (`service_hosts`: the hosts of the vault's services, from discover)."""
    if session.session_id is None or start_seq is None:
        return
    _settle(c, session)
    try:
        hosts = unmatched_hosts(c, session, start_seq, service_hosts)
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
