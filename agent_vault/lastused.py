"""When each agent was last seen (SPEC §9: `GET /v1/agents` `last_used_at`).

`note` runs on every authentication (a proxy CONNECT or absolute-form request, an API call): a dict
write under a lock, no store access. `flush` (housekeeping, every `FLUSH_EVERY` seconds, in a worker
thread) writes what was noted since: one UPDATE per agent seen, whatever its traffic. A session minted
by an agent counts as that agent's use. The column lags use by at most a flush period.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import update
from sqlmodel import col

from agent_vault.domain.principal import Principal
from agent_vault.models import Agent
from agent_vault.store import Store

FLUSH_EVERY = 60.0


class LastUsed:
    def __init__(self) -> None:
        self._seen: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def note(self, p: Principal) -> None:
        if p.agent_id is not None:
            now = datetime.now(UTC)
            with self._lock:
                self._seen[p.agent_id] = now

    def flush(self, store: Store) -> int:
        """Write the noted times (blocking: a worker thread); returns how many agents were updated. On a
        store failure the notes are kept for the next flush (a newer note wins)."""
        with self._lock:
            seen, self._seen = self._seen, {}
        if not seen:
            return 0
        try:
            with store.write() as s:
                for agent_id, when in seen.items():
                    s.exec(update(Agent).where(col(Agent.id) == agent_id).values(last_used_at=when))
        except BaseException:
            with self._lock:
                for agent_id, when in seen.items():
                    self._seen.setdefault(agent_id, when)
            raise
        return len(seen)
