"""Every error a user meets says what to do next (SPEC §6: `hint` is "what to do next"): each class of
errors.py has a non-empty default hint, so does the API's own 404/405, a role refusal names the way out,
errors about a value read from the environment name the variable (not "Check the command's arguments."),
and pydantic's "Value error, " prefix never reaches a message."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent_vault import errors, keys, validation
from agent_vault.api.app import create_app
from agent_vault.config import env_settings
from agent_vault.domain.principal import Principal
from agent_vault.domain.services import parse_service
from agent_vault.errors import AgentVaultError, Forbidden, InvalidRequest

GENERIC = InvalidRequest.hint  # "Check the command's arguments.": wrong for a value nobody typed

ERRORS_PY = [
    c
    for c in vars(errors).values()
    if inspect.isclass(c)
    and issubclass(c, AgentVaultError)
    and c.__module__ == errors.__name__
    and c is not AgentVaultError  # never raised bare (below): the subclasses carry the hints
]


def test_every_error_class_of_errors_py_has_a_default_hint() -> None:
    assert len(ERRORS_PY) >= 50
    empty = sorted(c.__name__ for c in ERRORS_PY if not c.hint.strip())
    assert empty == []
    # the body an API answer carries, with no hint passed at the raise site
    for cls in (errors.NotFound, errors.Forbidden, errors.Conflict, errors.BadRequest):
        assert cls("x").body()["hint"] == cls.hint != ""


def test_the_bare_base_class_is_never_raised() -> None:
    """Its hint is empty (a subclass defined elsewhere must not inherit a misleading one), so it must
    never be what a user sees: every raise names a subclass."""
    root = Path(errors.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "raise AgentVaultError(" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_the_apis_own_404_and_405_carry_a_hint() -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        missing = client.get("/v1/no-such-endpoint")
        wrong_method = client.put("/v1/discover")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert "/v1/" in missing.json()["hint"]
    assert wrong_method.status_code == 405 and wrong_method.json()["hint"]


def test_a_role_refusal_says_what_to_do() -> None:
    session = Principal(kind="session", token_id=7, name="user:o@example.com", session_vault="default")
    with pytest.raises(Forbidden) as e:
        session.require("default", "member")
    assert "you have proxy" in e.value.message and "session token" in e.value.hint
    user = Principal(kind="user", token_id=1, name="m@example.com", grants={"default": "proxy"})
    with pytest.raises(Forbidden) as e:
        user.require("default", "admin")
    assert e.value.hint == "Ask a vault admin for role admin on the vault."


def test_pydantic_prefixes_are_dropped_and_locations_kept() -> None:
    assert validation.message("Value error, name 't1' must be 3-64 characters") == (
        "name 't1' must be 3-64 characters"
    )
    assert validation.message("Assertion failed, x") == "x"
    assert validation.message("Field required") == "Field required"
    assert validation.fields([{"loc": ("auth", "token"), "msg": "Value error, bad", "input": "s3cr3t"}]) == [
        {"loc": "auth.token", "msg": "bad"}
    ]
    with pytest.raises(InvalidRequest) as e:
        parse_service({"name": "t1", "host": "api.example.com", "auth": {"type": "bearer", "token": "K"}})
    assert e.value.message.startswith("invalid service definition: name: name 't1' must be 3-64 characters")
    assert "Value error" not in e.value.message
    assert all("Value error" not in f["msg"] for f in e.value.extra["fields"])


def test_the_cli_service_validator_drops_the_prefix_too() -> None:
    from agent_vault.cli.serviceflags import validate

    with pytest.raises(InvalidRequest) as e:
        validate({"name": "t1", "host": "api.example.com", "auth": {"type": "bearer", "token": "K"}})
    assert e.value.message.startswith("invalid service definition: name: name 't1'")
    assert "Value error" not in e.value.message


def test_a_setting_from_the_environment_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_VAULT_PORT", "not-a-port")
    with pytest.raises(InvalidRequest) as e:
        env_settings()
    assert e.value.message.startswith("invalid AGENT_VAULT_PORT: ")
    assert "AGENT_VAULT_PORT" in e.value.hint and e.value.hint != GENERIC
    assert "not-a-port" not in e.value.message  # the value is never repeated (it may be a secret URL)

    monkeypatch.setenv("AGENT_VAULT_FAST_PATH", "maybe")
    monkeypatch.delenv("AGENT_VAULT_PORT")
    with pytest.raises(InvalidRequest) as e:
        env_settings()
    assert e.value.message == "invalid AGENT_VAULT_FAST_PATH: must be on or off"  # no "Value error, "
    monkeypatch.delenv("AGENT_VAULT_FAST_PATH")

    with pytest.raises(InvalidRequest) as e:  # a flag's value: the command's arguments are the place
        env_settings(port="not-a-port")
    assert e.value.message.startswith("invalid setting port: ") and e.value.hint == GENERIC


def test_a_short_master_password_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keys, "_env_digest", None)
    monkeypatch.setenv("AGENT_VAULT_MASTER_PASSWORD", "short-pw")
    pw = keys.master_password_from_env()
    assert pw == "short-pw"
    with pytest.raises(InvalidRequest) as e:
        keys.check_master_password(pw)
    assert "AGENT_VAULT_MASTER_PASSWORD" in e.value.hint and e.value.hint != GENERIC
    with pytest.raises(InvalidRequest) as e:  # typed at a prompt: no variable to blame
        keys.check_master_password("typed-short")
    assert "AGENT_VAULT_MASTER_PASSWORD" not in e.value.hint and e.value.hint != GENERIC
