"""Pure cryptography: Argon2id KEK, AES-256-GCM seal/open with identity-bound AAD, tokens.

Success is "no exception". Nothing here logs, and no error message contains key material,
plaintext or a token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
KEY_BYTES = 32
AAD_PREFIX = "agent-vault/v1"


class DecryptionError(Exception):
    """The GCM tag did not verify: wrong key, wrong AAD (row moved) or tampered bytes.

    Internal to the pure core, outside the errors.py tree on purpose: callers map it at the edge
    (WrongMasterPassword, KeyMaterialUnavailable, CredentialCorrupt)."""


@dataclass(frozen=True, slots=True)
class KdfProfile:
    """Argon2id cost. PRODUCTION is SPEC §4.1; TEST is for test suites only."""

    time_cost: int
    memory_kib: int
    parallelism: int


PRODUCTION = KdfProfile(time_cost=3, memory_kib=65536, parallelism=4)
TEST = KdfProfile(time_cost=1, memory_kib=1024, parallelism=1)


def derive_kek(password: str, salt: bytes, profile: KdfProfile) -> bytes:
    """Argon2id(password, salt) -> 32 bytes. Slow by design: never call on the request path."""
    return hash_secret_raw(
        password.encode(),
        salt,
        time_cost=profile.time_cost,
        memory_cost=profile.memory_kib,
        parallelism=profile.parallelism,
        hash_len=KEY_BYTES,
        type=Type.ID,
    )


def new_key() -> bytes:
    """32 random bytes (a DEK)."""
    return os.urandom(KEY_BYTES)


def aad_for(*parts: str | int) -> bytes:
    """`agent-vault/v1|part|part...` — binds a ciphertext to what it belongs to."""
    return "|".join([AAD_PREFIX, *map(str, parts)]).encode()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce(12) || ciphertext || tag, with a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of `seal`. Raises DecryptionError (never returns garbage)."""
    if len(blob) < NONCE_BYTES + 16:
        raise DecryptionError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError("authentication tag did not verify") from None


def credential_aad(vault_id: int, key: str, key_version: int = 1) -> bytes:
    return aad_for("credential", vault_id, key, key_version)


def mint_token(prefix: str) -> str:
    """prefix + 43 URL-safe chars (32 random bytes). Shown once; store only `digest(token)`."""
    return prefix + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """SHA-256 lowercase hex of a token: the only form a token is stored in."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
