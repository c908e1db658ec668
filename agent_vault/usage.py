"""LLM token budgets (issue #20): parse usage from OpenAI- and Anthropic-style responses without
buffering streams, count it per (vault, service, agent) and calendar window, persist it.

* `UsageParser` is fed the response body as it passes (a stream tap or the buffered body) and keeps
  only a bounded line buffer (`MAX_LINE`): SSE `data:` lines are decoded one at a time; a longer line
  is skipped. OpenAI: `usage.total_tokens` (the final chunk of a stream with
  `stream_options.include_usage`, or the JSON body). Anthropic: `usage.input_tokens` +
  `output_tokens` (the JSON body, or `message_start` then the cumulative `message_delta` events).
  `feed` returns the tokens newly seen, so an interrupted stream still counts what went by.
* `UsageMeter` holds the counters (thread-safe): budgets apply per service (all agents of the vault
  together), usage is reported per agent. Windows are UTC calendar days or months.
* Persistence: `usage.json` in the home (0600, atomic replace), written off the hot path by the
  proxy's flusher every few seconds and at shutdown, loaded at start; only the current windows are
  kept. It holds names and counts, never a value.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_vault.home import write_private

MAX_LINE = 64 * 1024  # longest SSE line decoded; longer lines are skipped (never buffered whole)
MAX_JSON = 1 << 20  # longest JSON (non-SSE) body parsed for usage; longer ones are not counted
BUDGET_RE = re.compile(r"^\s*([1-9][0-9]{0,12})\s*/\s*(day|month)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int
    unit: str  # day | month

    def __str__(self) -> str:
        return f"{self.limit}/{self.unit}"

    def window(self, now: float) -> str:
        t = datetime.fromtimestamp(now, UTC)
        return t.strftime("%Y-%m-%d") if self.unit == "day" else t.strftime("%Y-%m")

    def seconds_left(self, now: float) -> float:
        t = datetime.fromtimestamp(now, UTC)
        if self.unit == "day":
            end = datetime(t.year, t.month, t.day, tzinfo=UTC).timestamp() + 86400
        else:
            y, m = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            end = datetime(y, m, 1, tzinfo=UTC).timestamp()
        return max(1.0, end - now)


def parse_budget(text: str) -> Budget:
    """`100000/day` or `2000000/month` -> Budget; ValueError with a one-line message otherwise."""
    m = BUDGET_RE.match(text)
    if m is None:
        raise ValueError("token budget must be N/day or N/month with N a positive integer (e.g. 200000/day)")
    return Budget(int(m.group(1)), m.group(2).lower())


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 else 0


class UsageParser:
    """Incremental usage extraction from one response body (JSON or SSE)."""

    __slots__ = ("_buf", "_counted", "_in", "_openai", "_out", "_skip", "sse")

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self._buf = bytearray()
        self._skip = False  # inside a line longer than MAX_LINE
        self._openai = 0
        self._in = 0
        self._out = 0
        self._counted = 0

    def _total(self) -> int:
        return self._openai if self._openai else self._in + self._out

    def _event(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            usage = obj["message"].get("usage")
        if not isinstance(usage, dict):
            return
        if "total_tokens" in usage:
            self._openai = max(self._openai, _int(usage["total_tokens"]))
            return
        if "input_tokens" in usage:
            self._in = max(self._in, _int(usage["input_tokens"]))
        if "output_tokens" in usage:  # cumulative in message_delta
            self._out = max(self._out, _int(usage["output_tokens"]))

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload and payload != b"[DONE]":
                with contextlib.suppress(ValueError):  # not JSON: not a usage event
                    self._event(json.loads(payload))

    def feed(self, chunk: bytes) -> int:
        """Consume a piece of the body (b"" = end); return the tokens newly seen."""
        if not self.sse:
            if len(self._buf) + len(chunk) <= MAX_JSON:
                self._buf += chunk
            else:
                self._skip = True
            if not chunk and not self._skip:
                with contextlib.suppress(ValueError):  # not JSON: nothing to count
                    self._event(json.loads(bytes(self._buf)))
                self._buf.clear()
        else:
            for piece in chunk.splitlines(keepends=True):
                if self._skip:
                    self._skip = not piece.endswith(b"\n")
                    continue
                self._buf += piece
                if piece.endswith(b"\n"):
                    self._line(bytes(self._buf).rstrip(b"\r\n"))
                    self._buf.clear()
                elif len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    self._skip = True
            if not chunk and self._buf:
                self._line(bytes(self._buf))
                self._buf.clear()
        new = self._total() - self._counted
        if new > 0:
            self._counted += new
            return new
        return 0


class UsageMeter:
    """Token counters per (vault, service, agent, window); thread-safe; persisted to `path`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._dirty = False
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text())["usage"]
            for r in rows:
                key = (str(r["vault"]), str(r["service"]), str(r["agent"]), str(r["window"]))
                self._counts[key] = _int(r["tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: start empty (the file holds counts only)

    def add(self, vault: str, service: str, agent: str, budget: Budget, tokens: int) -> None:
        if tokens <= 0:
            return
        window = budget.window(time.time())
        with self._lock:
            key = (vault, service, agent, window)
            self._counts[key] = self._counts.get(key, 0) + tokens
            self._dirty = True

    def used(self, vault: str, service: str, budget: Budget, agent: str | None = None) -> int:
        window = budget.window(time.time())
        with self._lock:
            return sum(
                n
                for (v, s, a, w), n in self._counts.items()
                if v == vault and s == service and w == window and (agent is None or a == agent)
            )

    def flush(self) -> None:
        """Write the current windows' counters (atomic replace, 0600); drop older windows."""
        if self.path is None or not self._dirty:
            return
        now = time.time()
        current = {Budget(1, "day").window(now), Budget(1, "month").window(now)}
        with self._lock:
            self._counts = {k: n for k, n in self._counts.items() if k[3] in current}
            rows = [
                {"vault": v, "service": s, "agent": a, "window": w, "tokens": n}
                for (v, s, a, w), n in sorted(self._counts.items())
            ]
            self._dirty = False
        write_private(self.path, json.dumps({"usage": rows}))
