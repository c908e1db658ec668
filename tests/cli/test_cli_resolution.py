"""Vault resolution (SPEC §10): --vault > AGENT_VAULT_VAULT > .agent-vault.toml > cli/context > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_vault.cli import G
from agent_vault.cli.common import read_context, resolve_vault, write_context
from agent_vault.errors import InvalidRequest


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "repo"
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert resolve_vault() == ("default", "default")

    write_context(G.home, "from-context")
    assert (G.home / "cli" / "context").stat().st_mode & 0o777 == 0o600
    assert read_context(G.home) == "from-context"
    assert resolve_vault()[0] == "from-context"

    (project / ".agent-vault.toml").write_text('vault = "from-project"\naddr = "http://127.0.0.1:1"\n')
    assert resolve_vault() == ("from-project", str(project / ".agent-vault.toml"))

    monkeypatch.setenv("AGENT_VAULT_VAULT", "from-env")
    assert resolve_vault() == ("from-env", "AGENT_VAULT_VAULT")

    assert resolve_vault("from-flag") == ("from-flag", "--vault")


def test_nearest_project_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".agent-vault.toml").write_text('vault = "outer"\n')
    inner = tmp_path / "a"
    inner.mkdir()
    (inner / ".agent-vault.toml").write_text('vault = "inner"\n')
    monkeypatch.chdir(inner)
    assert resolve_vault()[0] == "inner"
    monkeypatch.chdir(tmp_path)
    assert resolve_vault()[0] == "outer"


def test_project_file_without_vault_falls_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".agent-vault.toml").write_text('addr = "http://127.0.0.1:1"\n')
    monkeypatch.chdir(tmp_path)
    write_context(G.home, "ctx")
    assert resolve_vault()[0] == "ctx"


def test_broken_project_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".agent-vault.toml").write_text("vault = \n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest, match="cannot parse"):
        resolve_vault()
    (tmp_path / ".agent-vault.toml").write_text("vault = 3\n")
    with pytest.raises(InvalidRequest, match="must be a string"):
        resolve_vault()
