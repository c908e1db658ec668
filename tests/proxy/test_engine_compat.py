"""The engine check (issue 14): the installed mitmproxy passes; an untested version or a missing
patch point refuses to start with exit 1 and one line naming mitmproxy, its version and the range."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.env import base_env
from mitmproxy.proxy.layers import http as mhttp

from agent_vault.proxy import engine, engine_compat
from agent_vault.proxy.engine_compat import _http1


def test_installed_engine_is_compatible() -> None:
    assert engine_compat.problems() == []
    engine_compat.require_compatible()


@pytest.mark.parametrize("version", ["12.2.3", "12.4.0", "13.0.0", "11.1.3"])
def test_versions_outside_the_tested_range_are_named(version: str) -> None:
    found = engine_compat.problems(version)
    assert found[0] == f"version {version} is outside the tested range {engine_compat.TESTED_TEXT}"


@pytest.mark.parametrize("version", ["12.3.0", "12.3.1", "12.3.17"])
def test_versions_inside_the_range_pass(version: str) -> None:
    assert engine_compat.problems(version) == []


def test_a_patch_point_the_engine_no_longer_reads_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the HTTP layer stopped building streams through the name engine.install replaces, the
    replacement would silently do nothing: the check must see it."""

    def make_stream(self: object, stream_id: int) -> object:  # builds its stream some other way
        return iter(())

    monkeypatch.setattr(mhttp.HttpLayer, "make_stream", make_stream)
    found = engine_compat.problems()
    assert any("make_stream" in p for p in found)
    with pytest.raises(engine_compat.EngineIncompatible) as e:
        engine_compat.require_compatible()
    assert "mitmproxy" in e.value.message and engine_compat.TESTED_TEXT in e.value.message
    with pytest.raises(engine_compat.EngineIncompatible):
        engine.install()  # never patches an engine it does not know


def test_a_missing_state_method_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mhttp.HttpStream, "state_consume_request_body")
    assert any("HttpStream state methods" in p for p in engine_compat.problems())


def test_the_upstream_client_patch_points_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """h1bounds wraps the input handling Http1Client inherits, h2bounds replaces the name HttpClient
    builds HTTP/2 upstreams through: an engine that does either differently is refused."""

    def own(self: object, event: object) -> Iterator[object]:
        yield from ()

    monkeypatch.setattr(_http1.Http1Client, "_handle_event", own)
    monkeypatch.setattr(mhttp.HttpClient, "_handle_event", own)
    found = engine_compat.problems()
    assert any(p.startswith("patch point missing: Http1Client inherits") for p in found), found
    assert any("module name Http2Client" in p for p in found), found


def _server_with_engine_version(tmp_path: Path, version: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import mitmproxy.version\nmitmproxy.version.VERSION = {version!r}\n"
    )
    env = base_env(tmp_path, PYTHONPATH=str(site), AGENT_VAULT_HOME=str(tmp_path / "home"))
    return subprocess.run(
        [sys.executable, "-m", "agent_vault", "server", "--port", "0", "--proxy-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_server_refuses_an_untested_engine_with_one_line(tmp_path: Path) -> None:
    cp = _server_with_engine_version(tmp_path, "12.9.0")
    assert cp.returncode == 1
    assert cp.stdout == ""
    line = cp.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    tested = engine_compat.TESTED_TEXT
    assert line.startswith(
        f"error: mitmproxy 12.9.0 is not supported: agent-vault is tested with mitmproxy {tested}"
    )


def test_server_passes_the_check_on_the_tested_engine(tmp_path: Path) -> None:
    """Same harness, the real version: the check passes and the server gets as far as the home."""
    cp = _server_with_engine_version(tmp_path, engine_compat.engine_version())
    assert cp.returncode == 1
    assert "is not initialised yet" in cp.stderr and "mitmproxy" not in cp.stderr


def test_the_check_still_passes_once_the_engine_is_installed() -> None:
    """The check reads mitmproxy's own classes, not the subclasses `engine.install` puts under their
    names (a check run in a process that already serves must not report the product's own patches)."""
    installed = engine._saved is not None
    engine.install()
    try:
        assert engine_compat.problems() == []
    finally:
        if not installed:
            engine.uninstall()
