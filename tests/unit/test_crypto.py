from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_vault import crypto


def test_seal_round_trip_and_fresh_nonce() -> None:
    key = crypto.new_key()
    aad = crypto.credential_aad(1, "API_KEY")
    a, b = crypto.seal(key, b"secret", aad), crypto.seal(key, b"secret", aad)
    assert a != b  # fresh nonce each time
    assert crypto.open_sealed(key, a, aad) == b"secret"


def test_wrong_aad_key_or_tampering_is_refused_not_garbage() -> None:
    key = crypto.new_key()
    blob = crypto.seal(key, b"secret", crypto.credential_aad(1, "API_KEY"))
    with pytest.raises(crypto.DecryptionError):
        crypto.open_sealed(key, blob, crypto.credential_aad(2, "API_KEY"))  # row moved to another vault
    with pytest.raises(crypto.DecryptionError):
        crypto.open_sealed(key, blob, crypto.credential_aad(1, "OTHER_KEY"))  # swapped between keys
    with pytest.raises(crypto.DecryptionError):
        crypto.open_sealed(crypto.new_key(), blob, crypto.credential_aad(1, "API_KEY"))
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(crypto.DecryptionError):
        crypto.open_sealed(key, tampered, crypto.credential_aad(1, "API_KEY"))
    with pytest.raises(crypto.DecryptionError):
        crypto.open_sealed(key, b"short", b"")


def test_kek_depends_on_password_and_salt() -> None:
    salt = os.urandom(16)
    k1 = crypto.derive_kek("correct horse battery", salt, crypto.TEST)
    assert k1 == crypto.derive_kek("correct horse battery", salt, crypto.TEST)
    assert k1 != crypto.derive_kek("correct horse batterz", salt, crypto.TEST)
    assert k1 != crypto.derive_kek("correct horse battery", os.urandom(16), crypto.TEST)
    assert crypto.PRODUCTION.memory_kib == 65536 and crypto.PRODUCTION.time_cost == 3


def test_tokens_have_prefix_and_are_stored_as_digest() -> None:
    t = crypto.mint_token("av_agt_")
    assert t.startswith("av_agt_") and 50 <= len(t) <= 51
    d = crypto.digest(t)
    assert len(d) == 64 and t not in d and d == d.lower()
    assert crypto.same_digest(d, crypto.digest(t))
    assert not crypto.same_digest(d, crypto.digest(t.upper()))  # case-sensitive


@given(st.binary(max_size=512), st.text(max_size=40))
def test_seal_open_property(data: bytes, key_name: str) -> None:
    key = b"k" * 32
    aad = crypto.aad_for("credential", 7, key_name)
    assert crypto.open_sealed(key, crypto.seal(key, data, aad), aad) == data
