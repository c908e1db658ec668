"""SPEC §4.4: a login for an unknown email costs what a real one costs (no timing oracle on emails)."""

from __future__ import annotations

from collections.abc import Iterator

import argon2
import pytest

from agent_vault import crypto, passwords


@pytest.fixture
def profile(monkeypatch: pytest.MonkeyPatch) -> Iterator[crypto.KdfProfile]:
    """A cost other than the test suite's own cheap one (which an old fixed dummy happened to equal)."""
    p = crypto.KdfProfile(memory_kib=2048, time_cost=2, parallelism=1)
    monkeypatch.setattr(passwords, "kdf_profile", lambda: p)
    passwords._hasher.cache_clear()
    passwords._dummy.cache_clear()
    yield p
    passwords._hasher.cache_clear()
    passwords._dummy.cache_clear()


def test_the_dummy_verify_runs_at_the_cost_of_real_hashes(profile: crypto.KdfProfile) -> None:
    real = argon2.extract_parameters(passwords.hash_password("correct horse battery"))
    dummy = argon2.extract_parameters(passwords._dummy())
    assert (dummy.memory_cost, dummy.time_cost, dummy.parallelism) == (
        profile.memory_kib,
        profile.time_cost,
        profile.parallelism,
    )
    assert (real.memory_cost, real.time_cost, real.parallelism) == (
        dummy.memory_cost,
        dummy.time_cost,
        dummy.parallelism,
    )


def test_no_stored_hash_never_verifies(profile: crypto.KdfProfile) -> None:
    assert passwords.verify_password(None, "agent-vault: no such account") is False
    assert passwords.verify_password(None, "") is False
    stored = passwords.hash_password("s3cret-passw0rd")
    assert passwords.verify_password(stored, "s3cret-passw0rd") is True
    assert passwords.verify_password(stored, "wrong") is False
