"""Token-bucket and concurrency limiters keyed by token digest (SPEC §5.10). Loop-thread only."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

PROFILES = {
    "default": {"rate": 50.0, "burst": 500.0, "concurrent": 128, "auth_fail": 30, "global": 5000.0},
    "strict": {"rate": 20.0, "burst": 100.0, "concurrent": 32, "auth_fail": 10, "global": 2000.0},
}


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class FailureLimiter:
    """Counts failures per key in a sliding window; thread-safe (login, step-up, proxy auth).

    At most `MAX_KEYS` keys are kept. When full, expired failures go first, then keys still under the
    limit (forgetting one of their failures refuses nobody), then the oldest: a client flooding new
    keys (an email per attempt) cannot free the keys that are refused now, which wiping everything did."""

    MAX_KEYS = 100_000

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window = limit, window_s
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """0 if `key` may try again now, else whole seconds to wait."""
        now = time.monotonic()
        with self._lock:
            q = self._events.get(key)
            while q and q[0] < now - self.window:
                q.popleft()
            if q is not None and not q:
                del self._events[key]
            if q and len(q) >= self.limit:
                return int(q[0] + self.window - now) + 1
        return 0

    def fail(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            q = self._events.get(key)
            if q is None:
                if len(self._events) >= self.MAX_KEYS:
                    self._make_room(now)
                q = self._events[key] = deque()
            q.append(now)
            while len(q) > self.limit:  # only the newest `limit` failures decide a refusal
                q.popleft()

    def _make_room(self, now: float) -> None:
        """Bring the table to at most 90 % of MAX_KEYS (so this O(n) pass runs once per many keys)."""
        target = self.MAX_KEYS * 9 // 10
        horizon = now - self.window
        rules = (
            lambda q: q[-1] < horizon,  # every failure expired
            lambda q: len(q) < self.limit,  # not refused now
        )
        for stale in rules:
            for k in [k for k, q in self._events.items() if stale(q)]:
                del self._events[k]
            if len(self._events) <= target:
                return
        for k in list(self._events)[: len(self._events) - target]:  # the oldest keys, all refused
            del self._events[k]


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._b: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 if allowed, else seconds to wait."""
        now = time.monotonic()
        b = self._b.get(key)
        if b is None:
            if len(self._b) > 100_000:
                self._b.clear()
            b = self._b[key] = _Bucket(self.burst, now)
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self.rate


class Limits:
    """All proxy limiters for one profile; `off` disables them."""

    def __init__(self, profile: str) -> None:
        self.enabled = profile in PROFILES
        p = PROFILES.get(profile, PROFILES["default"])
        self.requests = TokenBucket(p["rate"], p["burst"])
        self.global_ = TokenBucket(p["global"], p["global"])
        self.max_concurrent = int(p["concurrent"])
        self.auth_failures = FailureLimiter(int(p["auth_fail"]) if self.enabled else 10**9, 300.0)
        self.active: dict[str, int] = {}

    def request(self, key: str) -> tuple[str, float] | None:
        """(limiter, retry_after) when the request must be refused."""
        if not self.enabled:
            return None
        wait = self.global_.take("*")
        if wait:
            return "global", wait
        wait = self.requests.take(key)
        if wait:
            return "proxy_requests", wait
        return None

    def open(self, key: str) -> bool:
        if not self.enabled:
            return True
        n = self.active.get(key, 0)
        if n >= self.max_concurrent:
            return False
        self.active[key] = n + 1
        return True

    def close(self, key: str) -> None:
        n = self.active.get(key, 0) - 1
        if n <= 0:
            self.active.pop(key, None)
        else:
            self.active[key] = n
