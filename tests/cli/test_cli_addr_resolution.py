"""Which server the CLI talks to (cli/client.resolve_addr): --addr > AGENT_VAULT_ADDR > the project file >
the server running now for this home > the stored login's addr > http://127.0.0.1:14321. The running
server is a real flock on `<home>/server.lock` plus `<home>/server.json` (agent_vault/lifecycle.py), as
`agent-vault server` holds them; a 429 error line says how long to wait."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_vault.cli.client import DEFAULT_ADDR, ApiError, Client, delay_words
from agent_vault.cli.loginstore import session_file
from agent_vault.home import Home, ensure_dir, write_private
from agent_vault.lifecycle import ServerLock

RUNNING_API = "http://127.0.0.1:24321"
OLD_LOGIN = "http://127.0.0.1:14999"


def _login(home: Path, addr: str) -> None:
    ensure_dir(home)
    ensure_dir(home / "cli")
    data = {"addr": addr, "token": "av_usr_" + "x" * 43, "email": "o@example.com", "expires_at": None}
    write_private(session_file(home), json.dumps(data))


def test_the_running_server_of_this_home_wins_over_a_stale_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    _login(home, OLD_LOGIN)
    with ServerLock(Home(home)) as lock:
        lock.write_state(RUNNING_API, "http://127.0.0.1:24322", "passwordless")
        c = Client(None, home)
        assert c.addr == RUNNING_API
        assert c.token is None  # the old login's token never goes to another address
        assert Client("http://10.0.0.7:14321/", home).addr == "http://10.0.0.7:14321"  # --addr / project file
        monkeypatch.setenv("AGENT_VAULT_ADDR", "http://127.0.0.1:31000")
        assert Client(None, home).addr == "http://127.0.0.1:31000"


def test_the_login_is_used_when_no_server_runs_here(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _login(home, OLD_LOGIN)
    c = Client(None, home)
    assert c.addr == OLD_LOGIN and c.token == "av_usr_" + "x" * 43
    # a state file left behind by a crashed server (its lock is free) is not a running server
    (home / "server.lock").write_text("999999\n")
    (home / "server.json").write_text(json.dumps({"pid": 999999, "api": RUNNING_API}))
    assert Client(None, home).addr == OLD_LOGIN


def test_a_starting_server_or_nothing_at_all_means_the_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert Client(None, home).addr == DEFAULT_ADDR
    with ServerLock(Home(home)):  # locked, not ready yet: no address published
        assert Client(None, home).addr == DEFAULT_ADDR


def test_a_rate_limit_error_says_how_long_to_wait() -> None:
    body = {
        "error": "rate_limited",
        "message": "too many failed password attempts",
        "hint": "Slow down and retry after the given delay.",
        "retry_after": 882,
        "limiter": "login",
    }
    e = ApiError(429, body)
    assert e.message == "too many failed password attempts; retry after 14m 42s"
    assert e.extra["retry_after"] == 882  # --json keeps the number
    assert [delay_words(s) for s in (0, 1, 59, 60, 61, 3600, 5400)] == [
        "0s",
        "1s",
        "59s",
        "1m 0s",
        "1m 1s",
        "1h 0m",
        "1h 30m",
    ]
    assert ApiError(404, {"error": "not_found", "message": "x", "retry_after": 5}).message == "x"
