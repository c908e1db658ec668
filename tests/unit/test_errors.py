"""The error tree: every AgentVaultError subclass in agent_vault/ has a unique code and a 4xx/5xx
status, the API answers exactly that status and body, and the CLI prints one line and exits 1.

Exceptions outside the tree must be named in INTERNAL (pure-core control flow, mapped at the edge,
see agent_vault/errors.py); a new one fails `test_every_exception_class_is_in_the_tree_or_internal`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import agent_vault
from agent_vault import errors
from agent_vault.api.app import create_app
from agent_vault.cli.client import ApiError
from agent_vault.errors import AgentVaultError, InvalidRequest

# Internal control flow of pure cores, always caught and mapped at the edge (errors.py docstring).
INTERNAL = {
    "agent_vault.crypto.DecryptionError",
    "agent_vault.hostpath.InvalidHost",
    "agent_vault.proxy.auth.MalformedProxyAuth",
    "agent_vault.proxy.ssrf.ResolveError",
    "agent_vault.proxy.engine.BodyOverLimit",
    # the fast path's internal signals (issue 24): caught in proxy/fast, never reach a client
    "agent_vault.proxy.fast.tlsio.TlsFailed",
    "agent_vault.proxy.fast.exchange.Abort",
    "agent_vault.proxy.fast.h1.HeadRefused",
    "agent_vault.proxy.fast.h1.BodyBroken",
    "agent_vault.proxy.fast.upstream.UpstreamFailed",
    "agent_vault.proxy.decoding.DecodedTooLarge",
    "agent_vault.proxy.decoding.CorruptEncoding",
    "agent_vault.proxy.sources.SourceFailed",
    "agent_vault.oskeyring.KeyringUnavailable",
}
# Carries the code and status of the server's answer per instance (the CLI replays API errors).
MIRRORS = {ApiError}


def _modules() -> list[ModuleType]:
    mods = [agent_vault]
    for info in pkgutil.walk_packages(agent_vault.__path__, "agent_vault."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI on import
        mods.append(importlib.import_module(info.name))
    return mods


MODULES = _modules()


def _tree() -> list[type[AgentVaultError]]:
    seen: list[type[AgentVaultError]] = []
    todo = list(AgentVaultError.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted((c for c in seen if c.__module__.startswith("agent_vault")), key=lambda c: c.__qualname__)


TREE = _tree()
CLASSES = [c for c in TREE if c not in MIRRORS]


def _instance(cls: type[AgentVaultError]) -> AgentVaultError:
    """Build one with placeholder arguments, whatever its constructor takes."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self"
        and p.default is p.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return cls(*(f"x{i}" for i in range(len(params))))


def test_the_walk_finds_the_tree() -> None:
    names = {c.__name__ for c in TREE}
    # errors.py itself, members defined beside their user, and the new local-failure classes
    assert {"NotFound", "ProxyInternal", "HomeError", "BindError", "AuditBusy", "SchemaTooNew"} <= names
    assert len(CLASSES) >= 45


def test_codes_are_unique_and_statuses_are_errors() -> None:
    by_code: dict[str, list[str]] = {}
    for cls in CLASSES:
        assert "code" in vars(cls), f"{cls.__qualname__} inherits its code: give it its own"
        by_code.setdefault(cls.code, []).append(cls.__qualname__)
        assert 400 <= cls.status <= 599, cls
        assert isinstance(cls.hint, str), cls
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}
    # ProxyInternal is the proxy's face of the base's `internal`; no other class may reuse it
    assert by_code["internal"] == ["ProxyInternal"]


def test_the_classes_are_real_classes_in_errors_py() -> None:
    """Greppable: every tree class of errors.py is a `class X(...)` statement in that file."""
    source = inspect.getsource(errors)
    for cls in CLASSES:
        if cls.__module__ == "agent_vault.errors":
            assert f"class {cls.__name__}(" in source
    assert "_kind(" not in source and " = type(" not in source


def test_every_exception_class_is_in_the_tree_or_internal() -> None:
    found = set()
    for mod in MODULES:
        for obj in vars(mod).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == mod.__name__
                and not issubclass(obj, AgentVaultError)
            ):
                found.add(f"{obj.__module__}.{obj.__qualname__}")
    assert found == INTERNAL


def _app(exc: AgentVaultError) -> FastAPI:
    app = create_app()

    @app.get("/__raise")
    def _raise() -> None:
        raise exc

    return app


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_api_answers_exactly_the_class_status_and_code(cls: type[AgentVaultError]) -> None:
    exc = _instance(cls)
    with TestClient(_app(exc), raise_server_exceptions=False) as client:
        r = client.get("/__raise")
    assert r.status_code == cls.status
    body: dict[str, Any] = r.json()
    assert body["error"] == cls.code
    assert body["message"] == exc.message
    # the command-line wording of InvalidRequest's default hint is reworded for an HTTP caller
    api_wording = issubclass(cls, InvalidRequest) and cls.hint == InvalidRequest.hint
    assert body["hint"] == (InvalidRequest.api_hint if api_wording else cls.hint)


def test_api_replays_a_mirrored_server_error() -> None:
    exc = ApiError(409, {"error": "conflict", "message": "taken", "hint": "h", "name": "n"})
    with TestClient(_app(exc), raise_server_exceptions=False) as client:
        r = client.get("/__raise")
    assert (r.status_code, r.json()) == (
        409,
        {"error": "conflict", "message": "taken", "hint": "h", "name": "n"},
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_cli_prints_one_line_and_exits_1(
    cls: type[AgentVaultError], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agent_vault.cli as cli

    exc = _instance(cls)

    def boom(_argv: list[str]) -> list[str]:
        raise exc

    monkeypatch.setattr(cli, "extract_globals", boom)
    with pytest.raises(SystemExit) as info:
        cli.main(["version"])
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    hint = f" ({cls.hint})" if cls.hint else ""
    assert captured.err.splitlines() == [f"error: {exc.message}{hint}"]
