"""User password hashing (Argon2id). Slow by design: call from worker threads, never the proxy path."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from agent_vault.keys import kdf_profile


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    p = kdf_profile()
    return PasswordHasher(time_cost=p.time_cost, memory_cost=p.memory_kib, parallelism=p.parallelism)


@lru_cache(maxsize=1)
def _dummy() -> str:
    """A hash at the same cost as every real one (SPEC §4.4): verifying against it for an unknown email
    takes as long as for a real account. Made once per process (one hash's time, on the first miss)."""
    return _hasher().hash("agent-vault: no such account")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True iff `password` matches. With no stored hash, runs a dummy verify (no timing oracle)."""
    try:
        return _hasher().verify(stored_hash or _dummy(), password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False
