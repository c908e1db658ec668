"""Test isolation: nothing of the developer's environment leaks in; every test owns its home; cheap Argon2.

`isolated_session_env` (session, autouse) strips every proxy/CA/`AGENT_VAULT_*` variable (helpers.env.leaks)
and sets the keyring/KDF variables before any other fixture runs, so module- and session-scoped fixtures
(the module-scoped `srv` servers of tests/e2e and tests/security) never see the developer's environment.
`isolated_env` (function, autouse) gives each test its own AGENT_VAULT_HOME. Subprocesses of the product
get helpers.env.base_env, built from scratch.

`FASTPATH_SUITE=on|off` (scripts/fastpath-diff): the session sets `AGENT_VAULT_FAST_PATH` like the other
variables above, and refuses to start (exit 4) unless the server knows `--fast-path`: a differential run
against a server that ignores the setting would compare the default path with itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.env import FASTPATH_SUITE, fast_path_env, fast_path_suite, leaks
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
    for name, value in {**_SET, **fast_path_env()}.items():
        mp.setenv(name, value)
    mp.setenv("AGENT_VAULT_HOME", str(home))


def pytest_sessionstart(session: pytest.Session) -> None:
    """With FASTPATH_SUITE set: a valid value, and a server that has the `--fast-path` flag, or exit 4."""
    try:
        setting = fast_path_suite()
    except ValueError as e:
        pytest.exit(str(e), returncode=4)
    if setting is None:
        return
    env = {k: v for k, v in os.environ.items() if not leaks(k)}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    cp = subprocess.run(
        [sys.executable, "-m", "agent_vault", "server", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if cp.returncode != 0 or "--fast-path" not in cp.stdout:
        pytest.exit(
            f"{FASTPATH_SUITE}={setting}, but `agent-vault server` has no --fast-path flag "
            f"(exit {cp.returncode}); the differential suite needs the fast path",
            returncode=4,
        )


def pytest_report_header(config: pytest.Config) -> str | None:
    setting = os.environ.get(FASTPATH_SUITE)
    return f"{FASTPATH_SUITE}={setting}: every server runs --fast-path {setting}" if setting else None


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
