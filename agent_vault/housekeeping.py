"""Periodic server chores on the event loop: audit retention and the gauges nobody else updates.

* Retention (SPEC §12): at start and then once a day, records older than `--audit-retention-days`
  (0 = keep forever) are pruned by the audit writer, which appends one `audit.prune` record.
* Agents' `last_used_at` (SPEC §9): what `LastUsed` noted, written every `FLUSH_EVERY` seconds.
* Metrics (SPEC §13): `agent_vault_audit_queue_depth` and the `agent_vault_audit_dropped_total`
  counter every tick, `agent_vault_proposals_pending{vault}` every `PROPOSALS_EVERY` seconds.

Blocking work (DB reads, the prune itself) runs in worker threads; a failing chore is logged by type
and retried at its next turn, it never stops the server. Cancel the task at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import col

from agent_vault.core import Core
from agent_vault.domain.proposals import expire_due
from agent_vault.lastused import FLUSH_EVERY
from agent_vault.metrics import Metrics
from agent_vault.models import Proposal, Vault

log = logging.getLogger("agent_vault.housekeeping")

TICK = 5.0
PROPOSALS_EVERY = 30.0
PRUNE_EVERY = 24 * 3600.0


def start_housekeeping(core: Core) -> asyncio.Task[None]:
    """Start the chores on the running loop; returns the task (cancel it at shutdown)."""
    return asyncio.create_task(_run(core), name="agent-vault-housekeeping")


def prune_once(core: Core) -> int:
    """Apply the retention setting now (blocking). Returns how many records were deleted."""
    days = core.settings.audit_retention_days
    if days <= 0:
        return 0
    deleted = core.audit.prune(datetime.now(UTC) - timedelta(days=days), actor="server")
    if deleted:
        log.info("audit retention: pruned %d records older than %d days", deleted, days)
    return deleted


def pending_proposals(core: Core) -> dict[str, int]:
    """Pending, unexpired proposals per vault name (every vault present, 0 included). Blocking."""
    now = datetime.now(UTC)
    stmt = (
        select(col(Vault.name), func.count(col(Proposal.id)))
        .select_from(Vault)
        .outerjoin(
            Proposal,
            (col(Proposal.vault_id) == col(Vault.id))
            & (col(Proposal.status) == "pending")
            & (col(Proposal.expires_at) > now),
        )
        .group_by(col(Vault.name))
    )
    with core.store.engine.connect() as conn:
        return {str(name): int(n) for name, n in conn.execute(stmt)}


def refresh_gauges(core: Core, metrics: Metrics, *, proposals: bool = False) -> None:
    """Set the audit gauges (cheap); with `proposals`, also the pending-proposal gauge (a DB read:
    blocking, so never on the event loop)."""
    metrics.audit_depth.set(core.audit.depth)
    metrics.sync_audit_dropped(core.audit.dropped_total)
    if proposals:
        set_pending(core, metrics, pending_proposals(core))


def set_pending(core: Core, metrics: Metrics, counts: dict[str, int]) -> None:
    """Set the gauge for every vault, then drop vaults deleted or renamed since (never a moment
    without labels, so a concurrent scrape sees no hole)."""
    for vault, n in counts.items():
        metrics.proposals_pending.labels(vault).set(n)
    seen = core.services.proposal_gauge_vaults
    for gone in seen - counts.keys():
        with contextlib.suppress(KeyError):  # already removed by a concurrent refresh
            metrics.proposals_pending.remove(gone)
    seen.intersection_update(counts)
    seen.update(counts)


async def _run(core: Core) -> None:
    last_prune = last_proposals = float("-inf")
    last_used = time.monotonic()
    while True:
        metrics = core.services.metrics
        if metrics is not None:
            refresh_gauges(core, metrics)
        now = time.monotonic()
        if now - last_prune >= PRUNE_EVERY:
            last_prune = now
            try:
                await asyncio.to_thread(prune_once, core)
            except Exception as exc:  # retention must not take the server down; retried tomorrow
                log.error("audit retention failed (%s)", type(exc).__name__)
        if now - last_proposals >= PROPOSALS_EVERY:
            last_proposals = now
            try:
                await asyncio.to_thread(expire_due, core)
            except Exception as exc:  # expiry is also applied lazily on every read
                log.error("proposal expiry sweep failed (%s)", type(exc).__name__)
            if metrics is not None:
                try:
                    set_pending(core, metrics, await asyncio.to_thread(pending_proposals, core))
                except Exception as exc:  # a gauge is not worth a crash; retried next turn
                    log.error("proposals gauge refresh failed (%s)", type(exc).__name__)
        if now - last_used >= FLUSH_EVERY:
            last_used = now
            try:
                await asyncio.to_thread(core.services.last_used.flush, core.store)
            except Exception as exc:  # kept for the next turn
                log.error("agents' last use could not be written (%s)", type(exc).__name__)
        await asyncio.sleep(TICK)
