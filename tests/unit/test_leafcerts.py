"""`proxy/leafcerts`: leaves valid 30 days (SPEC §4.3), a cached leaf near its end is minted again."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from mitmproxy import certs

from agent_vault.proxy import leafcerts

NAME = "api.example.test"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[certs.CertStore]:
    """mitmproxy's own store (a fresh CA in `tmp_path`), with the module installed."""
    s = certs.CertStore.from_store(tmp_path, "mitmproxy", 2048)
    leafcerts.install()
    try:
        yield s
    finally:
        leafcerts.uninstall()


def _leaf(store: certs.CertStore) -> certs.CertStoreEntry:
    return store.get_cert(NAME, [x509.DNSName(NAME)])


def test_a_leaf_is_valid_for_30_days(store: certs.CertStore) -> None:
    cert = _leaf(store).cert
    assert cert.notafter - cert.notbefore <= datetime.timedelta(days=30)
    assert cert.notafter > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20)


def test_a_cached_leaf_is_reused_until_near_its_end(
    store: certs.CertStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _leaf(store)
    assert _leaf(store) is first  # cached: no new key work per handshake
    monkeypatch.setattr(leafcerts, "REFRESH_BEFORE", datetime.timedelta(days=40))  # as if 3 weeks passed
    again = _leaf(store)
    assert again is not first and again.cert.serial != first.cert.serial
    assert NAME in again.cert.altnames[0].value


def test_uninstall_restores_mitmproxy(tmp_path: Path) -> None:
    before = (certs.CERT_EXPIRY, certs.CertStore.get_cert)
    leafcerts.install()
    leafcerts.install()  # idempotent
    assert certs.CERT_EXPIRY == leafcerts.LEAF_VALIDITY
    leafcerts.uninstall()
    assert (certs.CERT_EXPIRY, certs.CertStore.get_cert) == before
