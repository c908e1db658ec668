"""Test isolation: nothing of the developer's environment leaks in; every test owns its home; cheap Argon2.

`isolated_session_env` (session, autouse) strips every proxy/CA/`AGENT_VAULT_*` variable (helpers.env.leaks)
and sets the keyring/KDF variables before any other fixture runs, so module- and session-scoped fixtures
(the module-scoped `srv` servers of tests/e2e and tests/security) never see the developer's environment.
`isolated_env` (function, autouse) gives each test its own AGENT_VAULT_HOME. Subprocesses of the product
get helpers.env.base_env, built from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.env import leaks
from helpers.pg import PgServer, missing_reason

_SET = {
    "AGENT_VAULT_TEST_KDF": "1",
    "AGENT_VAULT_KEYRING": "0",
    "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
}


def _isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    for name in list(os.environ):
        if leaks(name):
            mp.delenv(name, raising=False)
    for name, value in _SET.items():
        mp.setenv(name, value)
    mp.setenv("AGENT_VAULT_HOME", str(home))


@pytest.fixture(scope="session", autouse=True)
def isolated_session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("session") / "home")
        yield


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    _isolate(monkeypatch, home)  # again: an in-process CLI run may have set AGENT_VAULT_* meanwhile
    yield home


@pytest.fixture(scope="session")
def upstream_ca() -> trustme.CA:
    """One trustme CA for every local HTTPS upstream of the session."""
    return trustme.CA()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store/domain/audit suites run on both backends: a fresh SQLite file, or a fresh database on
    the session's real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.new_database()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A real PostgreSQL for the session (tests/helpers/pg.py); `pg.new_database()` per test.

    Missing binaries fail the run under CI (never a silent skip there) and skip it locally."""
    reason = missing_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    server = PgServer.create()
    try:
        yield server
    finally:
        server.close()
