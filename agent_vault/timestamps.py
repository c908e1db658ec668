"""The audit log's timestamp format (SPEC §12): ISO-8601 UTC with microseconds. A leaf module, so the
CLI can format times without loading the audit package (and the ORM behind it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_last_second: tuple[int, str] = (-1, "")  # the last whole second `utc_ts()` formatted, and its text


def utc_ts(when: datetime | None = None) -> str:
    """`when` (naive = UTC; default now) as ISO-8601 UTC with microseconds: 2026-11-23T10:00:00.123456Z.

    Now (every audit record) formats the date and time once per second and adds the microseconds."""
    global _last_second  # one tuple, read once: threads never mix one second's text with another's
    if when is None:
        sec, micros = divmod(time.time_ns() // 1000, 1_000_000)
        last = _last_second
        if last[0] != sec:
            _last_second = last = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        return f"{last[1]}.{micros:06d}Z"
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
