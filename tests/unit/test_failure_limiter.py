"""The failed-attempt limiter (login, step-up, proxy auth): bounded, and a flood of new keys cannot
free a key that is refused now (an attacker trying one email per attempt to wipe the owner's count)."""

from __future__ import annotations

import pytest

from agent_vault.ratelimit import FailureLimiter


@pytest.fixture
def limiter(monkeypatch: pytest.MonkeyPatch) -> FailureLimiter:
    monkeypatch.setattr(FailureLimiter, "MAX_KEYS", 200)
    return FailureLimiter(3, 300.0)


def test_a_refused_key_stays_refused_through_a_flood_of_new_keys(limiter: FailureLimiter) -> None:
    for _ in range(3):
        limiter.fail("owner@example.com")
    assert limiter.retry_after("owner@example.com") > 0
    for i in range(5_000):
        limiter.fail(f"flood-{i}@example.com")
        assert len(limiter._events) <= FailureLimiter.MAX_KEYS
    assert limiter.retry_after("owner@example.com") > 0


def test_when_every_key_is_refused_the_oldest_go_and_the_table_stays_bounded(limiter: FailureLimiter) -> None:
    for i in range(1_000):
        for _ in range(3):
            limiter.fail(f"k{i}")
        assert len(limiter._events) <= FailureLimiter.MAX_KEYS
    assert limiter.retry_after("k999") > 0  # the newest are kept
    assert limiter.retry_after("k0") == 0  # the oldest made room


def test_the_window_slides_and_a_key_is_refused_only_at_the_limit(
    limiter: FailureLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("agent_vault.ratelimit.time.monotonic", lambda: now[0])
    limiter.fail("a")
    limiter.fail("a")
    assert limiter.retry_after("a") == 0
    limiter.fail("a")
    assert limiter.retry_after("a") == 301
    now[0] += 301
    assert limiter.retry_after("a") == 0 and "a" not in limiter._events
