"""User password hashing (Argon2id). Slow by design: call from worker threads, never the proxy path."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from agent_vault.keys import kdf_profile

_DUMMY = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$W3+Ct3dTz7N5OPtRSBzzXFs5MUe9vqFnw8XZkBIp6Ow"


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    p = kdf_profile()
    return PasswordHasher(time_cost=p.time_cost, memory_cost=p.memory_kib, parallelism=p.parallelism)


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True iff `password` matches. With no stored hash, runs a dummy verify (no timing oracle)."""
    try:
        return _hasher().verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False
