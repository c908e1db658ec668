"""What the CLI prints, in words a user can act on, without a server: durations as `--ttl` takes them, piped
tables that never cut a value, `vault run`'s banner and unmatched-host note saying what really happens, a
vault name blamed on the file or variable it came from, dynamic sources checked where they will run, an
env-derived init error naming its variable, and scripts/lib.sh leaving nothing untracked in the checkout."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import base_env

from agent_vault.cli.client import ApiError
from agent_vault.cli.durations import format_duration, parse_duration
from agent_vault.cli.output import Out
from agent_vault.cli.run import _name_the_source, unmatched_behaviour
from agent_vault.cli.runreport import target_label
from agent_vault.credsource import make_spec
from agent_vault.domain.credentials import source_warnings
from agent_vault.errors import InvalidRequest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300.0, "5m"), (300, "5m"), (90, "1m30s"), (5400.0, "1h30m"), (604800, "7d"), (1, "1s"), (0.5, "0.5s")],
)
def test_durations_print_as_the_cli_takes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds == int(seconds):
        assert parse_duration(text) == seconds  # round trip: what is shown can be typed back


def test_a_piped_table_never_cuts_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()  # not a terminal: what `agent-vault vault credential list | cat` gets
    monkeypatch.setattr(sys, "stdout", buf)
    printer = Out()
    key = "FILE_KEY_THAT_IS_RATHER_LONG_FOR_A_NARROW_TABLE"
    row = {
        "key": key,
        "has_value": True,
        "source": "command",
        "ttl": "5m",
        "version": 12,
        "updated_at": "2025-01-01T00:00:00Z",
        "used_by": ["first-service", "second-service"],
        "description": "a description long enough to need more than eighty columns on its own line",
    }
    printer.table({}, [row], list(row))
    text = buf.getvalue()
    assert "…" not in text
    for value in (key, "has_value", "first-service, second-service", row["description"]):
        assert value in text, text
    assert len(text.splitlines()[1]) > 80


def test_the_unmatched_note_names_the_port_when_a_service_is_on_that_host() -> None:
    services = ["127.0.0.1", "*.example.com"]
    assert target_label("127.0.0.1", 28443, services) == "127.0.0.1:28443"
    assert target_label("api.example.com", 8443, services) == "api.example.com:8443"
    assert target_label("example.org", 443, services) == "example.org"  # no service there: the host says it
    assert target_label("a.b.example.com", 443, services) == "a.b.example.com"  # a wildcard covers one label
    assert target_label("::1", 8443, ["::1"]) == "[::1]:8443"


def test_the_banner_shows_what_dry_run_does_to_unmatched_hosts() -> None:
    assert unmatched_behaviour({"unmatched_policy": "deny", "enforcement": "enforce"}) == "deny"
    assert (
        unmatched_behaviour({"unmatched_policy": "deny", "enforcement": "dry-run"})
        == "deny (dry-run: logged, not enforced)"
    )
    learn = unmatched_behaviour({"unmatched_policy": "deny", "enforcement": "learn"})
    assert learn.startswith("deny (learn: ") and "not enforced" in learn
    tunnel = unmatched_behaviour({"unmatched_policy": "tunnel", "enforcement": "dry-run"})
    assert tunnel.startswith("tunnel; ") and "not enforced" in tunnel


def test_a_vault_name_from_a_file_or_variable_is_blamed_on_it(tmp_path: Path) -> None:
    toml = str(tmp_path / ".agent-vault.toml")

    def missing() -> ApiError:
        return ApiError(404, {"error": "not_found", "message": "vault nosuch not found", "hint": "h"})

    e = _name_the_source(missing(), "nosuch", toml)
    assert e.message == f"vault nosuch not found (named in {toml})" and toml in e.hint
    e = _name_the_source(missing(), "nosuch", "AGENT_VAULT_VAULT")
    assert "AGENT_VAULT_VAULT" in e.message and "AGENT_VAULT_VAULT" in e.hint
    assert _name_the_source(missing(), "nosuch", "--vault").message == "vault nosuch not found"
    agent = ApiError(404, {"error": "not_found", "message": "agent bot not found", "hint": "h"})
    assert _name_the_source(agent, "nosuch", toml).message == "agent bot not found"
    denied = ApiError(403, {"error": "vault_forbidden", "message": "this token may not use vault x"})
    assert _name_the_source(denied, "x", toml).message.endswith(f"(named in {toml})")


def test_a_file_source_must_be_a_regular_file_or_not_exist_yet(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as e:
        source_warnings(make_spec({"kind": "file", "path": str(tmp_path)}), "K")
    assert e.value.message == f"{tmp_path} is not a regular file" and "directory" in e.value.hint
    later = tmp_path / "later.txt"
    (warning,) = source_warnings(make_spec({"kind": "file", "path": str(later)}), "K")
    assert str(later) in warning and "does not exist yet" in warning and "K" in warning
    later.write_text("v")
    assert source_warnings(make_spec({"kind": "file", "path": str(later)}), "K") == []


def test_a_command_source_warns_when_its_program_is_not_on_the_path() -> None:
    (warning,) = source_warnings(make_spec({"kind": "command", "command": "no-such-prog-x7 auth token"}), "K")
    assert "no-such-prog-x7" in warning and "PATH" in warning and "token" not in warning
    assert source_warnings(make_spec({"kind": "command", "command": f"{sys.executable} -V"}), "K") == []
    assert (
        source_warnings(make_spec({"kind": "command", "command": "no-such-prog-x7", "shell": True}), "K")
        == []
    )
    (warning,) = source_warnings(make_spec({"kind": "command", "command": "/no/such/prog"}), "K")
    assert "/no/such/prog" in warning


def test_init_names_the_variable_of_a_short_master_password(tmp_path: Path) -> None:
    env = base_env(tmp_path, AGENT_VAULT_MASTER_PASSWORD="too-short")
    cp = subprocess.run(
        [sys.executable, "-m", "agent_vault", "init", "--owner-email", "o@example.com", "--password-stdin"],
        input="owner-login-pass-1\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert cp.returncode == 1, cp.stderr
    (line,) = cp.stderr.splitlines()
    assert line.startswith("error: the master password must be at least 12 characters (")
    assert "AGENT_VAULT_MASTER_PASSWORD" in line and "Check the command's arguments" not in line
    assert "too-short" not in cp.stdout + cp.stderr


def test_make_venv_leaves_no_log_beside_the_venv(tmp_path: Path) -> None:
    """scripts/lib.sh `make_venv DIR` (scripts/serve makes `.venv` in the checkout): its log goes inside
    DIR, which .gitignore covers, never to DIR.log beside it. A stand-in Python makes it offline."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0; fi\n'
        'echo "pip says hello"\n'
    )
    fake.chmod(0o755)
    script = f'. "{ROOT}/scripts/lib.sh"; pick_python() {{ echo "{fake}"; }}; make_venv "{tmp_path}/.venv"'
    cp = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert cp.returncode == 0, cp.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "fake-python"]
    assert "pip says hello" in (tmp_path / ".venv" / "make-venv.log").read_text()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".venv/make-venv.log"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert ignored.returncode == 0  # in the checkout itself, git does not see it


def test_cli_only_errors_have_hints_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_vault.cli.common import Cancelled
    from agent_vault.cli.prompts import secret_value
    from agent_vault.errors import InvalidRequest

    assert Cancelled("cancelled").hint
    monkeypatch.delenv("AV_TEST_UNSET_VAR", raising=False)
    with pytest.raises(InvalidRequest) as e:
        secret_value("KEY", stdin=False, from_env="AV_TEST_UNSET_VAR", from_file=None)
    assert "AV_TEST_UNSET_VAR" in e.value.hint
