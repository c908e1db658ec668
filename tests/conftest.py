"""Test isolation: every test owns its home; no proxy/CA env leaks in; Argon2 is cheap."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

_STRIP = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
    "NODE_USE_ENV_PROXY",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    for name in list(os.environ):
        if name.upper() in _STRIP or name.startswith("AGENT_VAULT_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT_VAULT_HOME", str(home))
    monkeypatch.setenv("AGENT_VAULT_TEST_KDF", "1")
    monkeypatch.setenv("AGENT_VAULT_KEYRING", "0")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    yield home


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    """One trustme CA for every local HTTPS upstream of the session."""
    return trustme.CA()
