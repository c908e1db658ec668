"""A keyring that accepts writes but keeps nothing must not lose the CLI login (it goes to the file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import null

from agent_vault.cli import loginstore

LOGIN = {"addr": "http://127.0.0.1:8731", "token": "avu_" + "k" * 40, "email": "o@example.com"}


class _Forgetful(KeyringBackend):
    """Says yes to every write, returns nothing on read (like a misconfigured Secret Service)."""

    priority = 1  # type: ignore[assignment]

    def set_password(self, service: str, username: str, password: str) -> None:
        return None

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def delete_password(self, service: str, username: str) -> None:
        return None


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AGENT_VAULT_KEYRING", "1")
    before = keyring.get_keyring()
    keyring.set_keyring(request.param())
    yield
    keyring.set_keyring(before)


@pytest.mark.parametrize("backend", [null.Keyring, _Forgetful], indirect=True, ids=["null", "forgetful"])
def test_login_survives_a_keyring_that_keeps_nothing(backend: None, tmp_path: Path) -> None:
    where = loginstore.save_login(tmp_path, dict(LOGIN))
    assert where == str(loginstore.session_file(tmp_path))
    loaded = loginstore.load_login(tmp_path)
    assert loaded is not None and loaded["token"] == LOGIN["token"]
    assert loginstore.session_file(tmp_path).stat().st_mode & 0o777 == 0o600
