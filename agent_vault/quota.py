"""Per-service request quotas and LLM token budgets (issue #20): pure counters over fixed windows.

A quota `N/min|hour|day` counts requests per (vault, service, agent token digest) in calendar
windows aligned to the epoch (UTC): the window of `now` is `floor(now / period)`. Over the quota,
`take` returns the seconds until the window rolls (the `Retry-After`). Counters live in memory and
are bounded: entries of past windows are dropped as new windows start, and at most `max_entries`
live at once (the oldest window is dropped first). Counters start empty at server start: request
quotas are short windows, a restart resets them (documented in the README).

No values here: keys are names and token digests.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass

QUOTA_PERIODS = {"min": 60, "hour": 3600, "day": 86400}
QUOTA_RE = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(min|minute|hour|day)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int
    period: int  # seconds
    unit: str

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"


def parse_quota(text: str) -> Rate:
    """`100/min`, `5000/hour`, `20000/day` -> Rate; ValueError with a one-line message otherwise."""
    m = QUOTA_RE.match(text)
    if m is None:
        raise ValueError("quota must be N/min, N/hour or N/day with N a positive integer (e.g. 100/min)")
    unit = m.group(2).lower()
    unit = "min" if unit == "minute" else unit
    return Rate(int(m.group(1)), QUOTA_PERIODS[unit], unit)


class QuotaCounter:
    """Fixed-window request counters; thread-safe (the API reads them for discover)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._counts: dict[tuple[str, str, str], tuple[int, int]] = {}  # key -> (window, count)
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def take(self, key: tuple[str, str, str], rate: Rate, now: float | None = None) -> float | None:
        """Count one request; None if within the quota, else the seconds until the window rolls
        (the request is not counted then)."""
        now = time.time() if now is None else now
        window = math.floor(now / rate.period)
        with self._lock:
            w, n = self._counts.get(key, (window, 0))
            if w != window:
                n = 0
            if n >= rate.limit:
                return (window + 1) * rate.period - now
            if key not in self._counts and len(self._counts) >= self.max_entries:
                self._evict(window)
            self._counts[key] = (window, n + 1)
            return None

    def used(self, key: tuple[str, str, str], rate: Rate, now: float | None = None) -> int:
        now = time.time() if now is None else now
        w, n = self._counts.get(key, (-1, 0))
        return n if w == math.floor(now / rate.period) else 0

    def _evict(self, window: int) -> None:
        stale = [k for k, (w, _) in self._counts.items() if w != window]
        for k in stale or list(self._counts)[: max(1, len(self._counts) // 10)]:
            del self._counts[k]
