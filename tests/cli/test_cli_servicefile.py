"""Service definitions from flags and files; import planning; YAML/TOML export round-trips."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from agent_vault.cli.servicefile import AuthFlags, build_auth, dump_services, load_services_file
from agent_vault.cli.serviceflags import definition as _definition
from agent_vault.cli.serviceflags import validate
from agent_vault.cli.services import plan_import
from agent_vault.errors import InvalidRequest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "services.yaml"


def test_build_auth_per_type() -> None:
    assert build_auth(AuthFlags("bearer", token_key="GH_TOKEN")) == {"type": "bearer", "token": "GH_TOKEN"}
    assert build_auth(AuthFlags("basic", username="x-access-token", password_key="GH_TOKEN")) == {
        "type": "basic",
        "username_literal": "x-access-token",
        "password": "GH_TOKEN",
    }
    assert build_auth(AuthFlags("api-key", api_key_key="K", api_key_query="key", api_key_prefix="p-")) == {
        "type": "api-key",
        "key": "K",
        "query": "key",
        "prefix": "p-",
    }
    assert build_auth(AuthFlags("custom", custom_headers=["X-Key: {{ K }}"])) == {
        "type": "custom",
        "headers": {"X-Key": "{{ K }}"},
    }
    assert build_auth(AuthFlags("passthrough")) == {"type": "passthrough"}


def test_build_auth_errors() -> None:
    with pytest.raises(InvalidRequest, match="--token-key"):
        build_auth(AuthFlags("bearer"))
    with pytest.raises(InvalidRequest, match="--auth-type is required"):
        build_auth(AuthFlags())
    with pytest.raises(InvalidRequest, match="not both"):
        build_auth(AuthFlags("api-key", api_key_key="K", api_key_header="h", api_key_query="q"))


def test_partial_update_keeps_other_fields() -> None:
    base = validate(
        {
            "name": "ghub",
            "host": "api.github.com",
            "port": 443,
            "methods": ["GET"],
            "auth": {"type": "bearer", "token": "OLD"},
        }
    )
    d = _definition(
        "ghub",
        base,
        host=None,
        port=None,
        path="/v3",
        method=None,
        auth=AuthFlags(token_key="NEW"),
        substitute=None,
        substitute_in=None,
        redact=False,
        forward_set_cookie=None,
        enabled=False,
        description=None,
    )
    assert d["auth"] == {"type": "bearer", "token": "NEW"}
    assert (d["port"], d["methods"], d["path"], d["enabled"], d["redact_response"]) == (
        443,
        ["GET"],
        "/v3",
        False,
        False,
    )


def test_definition_from_flags_validates_locally() -> None:
    with pytest.raises(InvalidRequest, match="host"):
        _definition(
            "bad",
            None,
            host="*",
            port=None,
            path=None,
            method=None,
            auth=AuthFlags("bearer", token_key="K"),
            substitute=None,
            substitute_in=None,
            redact=None,
            forward_set_cookie=None,
            enabled=None,
            description=None,
        )
    d = _definition(
        "svc-one",
        None,
        host="API.Example.com",
        port=None,
        path="/api/*",
        method=["get"],
        auth=AuthFlags("bearer", token_key="K"),
        substitute=["K", "OTHER"],
        substitute_in="header,body",
        redact=None,
        forward_set_cookie=None,
        enabled=None,
        description=None,
    )
    assert d["host"] == "api.example.com" and d["path"] == "/api" and d["methods"] == ["GET"]
    assert d["substitutions"] == {"keys": ["K", "OTHER"], "in": ["header", "body"]}


def test_examples_file_loads_and_validates() -> None:
    services = [validate(s) for s in load_services_file(EXAMPLES)]
    assert [s["name"] for s in services][:3] == ["github", "anthropic", "acme-internal"]


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_export_round_trips(tmp_path: Path, fmt: str) -> None:
    services = [validate(s) for s in load_services_file(EXAMPLES)]
    services.append(
        validate(
            {
                "name": "odd",
                "host": "x.example",
                "description": 'quote " back\\slash é \x7f',
                "auth": {"type": "custom", "headers": {"X-A.B": "v {{ K }}"}},
            }
        )
    )
    text = dump_services(services, fmt)
    path = tmp_path / f"out.{fmt}"
    path.write_text(text)
    again = [validate(s) for s in load_services_file(path)]
    assert again == services
    if fmt == "toml":
        assert tomllib.loads(text)["services"][0]["name"] == "github"
    else:
        assert "null" not in text and yaml.safe_load(text)["services"][0]["name"] == "github"


def test_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("services: {a: 1}\n")
    with pytest.raises(InvalidRequest, match="'services' list"):
        load_services_file(p)
    p.write_text("services: [\n")
    with pytest.raises(InvalidRequest, match="not valid YAML"):
        load_services_file(p)
    t = tmp_path / "s.toml"
    t.write_text("[[services]\n")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        load_services_file(t)
    with pytest.raises(InvalidRequest, match="unsupported"):
        load_services_file(tmp_path / "s.json", "{}")


def test_plan_import() -> None:
    a = validate({"name": "aaa", "host": "a.example", "auth": {"type": "passthrough"}})
    b = validate({"name": "bbb", "host": "b.example", "auth": {"type": "passthrough"}})
    b2 = {**b, "path": "/v2"}
    c = validate({"name": "ccc", "host": "c.example", "auth": {"type": "passthrough"}})
    assert plan_import([a, b2, c], [a, b], replace=False) == [
        {"action": "unchanged", "name": "aaa"},
        {"action": "update", "name": "bbb"},
        {"action": "add", "name": "ccc"},
    ]
    assert plan_import([c], [a], replace=True) == [
        {"action": "add", "name": "ccc"},
        {"action": "remove", "name": "aaa"},
    ]
    with pytest.raises(InvalidRequest, match="duplicate"):
        plan_import([a, a], [], replace=False)


def test_an_unreadable_services_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="No such file or directory"):
        load_services_file(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"services: []\n# caf\xe9\n")
    with pytest.raises(InvalidRequest, match="not UTF-8 text"):
        load_services_file(latin)
