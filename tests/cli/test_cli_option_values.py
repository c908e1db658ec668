"""Bad option values are usage errors (SPEC §10: exit 2, one line), checked before any server is asked;
API validation answers (422) name their fields in the CLI's one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli_fixtures import run_cli
from helpers.env import base_env

from agent_vault.audit.chain import DECISIONS
from agent_vault.cli.client import ApiError
from agent_vault.cli.logs import DECISIONS as CLI_DECISIONS


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "--decision", "bogus"],
        ["logs", "follow", "--decision", "bogus"],
        ["logs", "verify", "--expect-head", "0000"],
    ],
)
def test_bad_option_values_exit_2(tmp_path: Path, args: list[str]) -> None:
    env = base_env(tmp_path, AGENT_VAULT_ADDR="http://127.0.0.1:9")  # nothing listens: never reached
    cp = run_cli(args, env)
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.startswith("error: ") and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert args[-2] in cp.stderr and "Traceback" not in cp.stderr


def test_the_cli_knows_every_decision() -> None:
    assert set(CLI_DECISIONS) == DECISIONS


def test_a_422_names_its_fields_without_input() -> None:
    body = {
        "error": "invalid_request",
        "message": "the request body or parameters are invalid",
        "hint": "Fix the fields listed.",
        "fields": [{"loc": "path.hid", "msg": "String should match pattern '^[0-9a-f]+$'"}],
    }
    err = ApiError(422, body)
    assert err.message.endswith(": path.hid: String should match pattern '^[0-9a-f]+$'")


def test_offline_verify_with_postgresql_points_at_a_server(tmp_path: Path) -> None:
    """`logs verify` with no server reachable reads the home's SQLite file; with DATABASE_URL set there
    is none, and the line says to verify through a running server (it named --home before)."""
    env = base_env(
        tmp_path,
        AGENT_VAULT_HOME=str(tmp_path / "home"),
        AGENT_VAULT_ADDR="http://127.0.0.1:9",  # nothing listens
        DATABASE_URL="postgresql://vault@127.0.0.1:9/agentvault",
    )
    cp = run_cli(["logs", "verify"], env)
    assert cp.returncode == 1, cp.stderr
    assert "DATABASE_URL is set" in cp.stderr and "start one (any replica)" in cp.stderr, cp.stderr
    assert "--home" not in cp.stderr and len(cp.stderr.strip().splitlines()) == 1
