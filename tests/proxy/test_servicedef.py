"""Service definition validation and normalisation (SPEC §5.4-§5.6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent_vault.servicedef import (
    ApiKeyAuth,
    BasicAuth,
    CustomAuth,
    ServiceDef,
    Substitutions,
    validate_credential_key,
    validate_name,
)


def svc(**kw: Any) -> ServiceDef:
    data: dict[str, Any] = {
        "name": "openai",
        "host": "api.openai.com",
        "auth": {"type": "bearer", "token": "K"},
    }
    data.update(kw)
    return ServiceDef.model_validate(data)


def test_defaults_for_an_injecting_service() -> None:
    s = svc()
    assert s.port is None and s.path == "/" and s.methods is None and s.enabled
    assert s.effective_redact is True
    assert s.effective_forward_set_cookie is False
    assert s.substitutions.in_ == ["header", "path", "query"]
    assert s.substitution_keys == ["K"]


def test_passthrough_defaults_flip_redaction_and_cookies() -> None:
    s = svc(auth={"type": "passthrough"})
    assert s.effective_redact is False
    assert s.effective_forward_set_cookie is True
    assert s.auth.referenced_keys() == []
    explicit = svc(auth={"type": "passthrough"}, redact_response=True, forward_set_cookie=False)
    assert explicit.effective_redact is True and explicit.effective_forward_set_cookie is False


@pytest.mark.parametrize(
    ("given_host", "stored"),
    [
        ("API.OpenAI.com.", "api.openai.com"),
        ("*.Example.COM", "*.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("2130706433", "127.0.0.1"),
        ("*.co.uk", "*.co.uk"),
    ],
)
def test_host_is_normalised(given_host: str, stored: str) -> None:
    assert svc(host=given_host).host == stored


@pytest.mark.parametrize(
    "bad",
    [
        "*",
        "*.com",
        "*.",
        "a.*.example.com",
        "*example.com",
        "**.example.com",
        "*.1.2.3.4",
        "a b.com",
        "u@h.com",
        "",
    ],
)
def test_bad_host_patterns_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        svc(host=bad)


@pytest.mark.parametrize(
    ("given_path", "stored"),
    [("/", "/"), ("/*", "/"), ("/v1/*", "/v1"), ("/v1/", "/v1"), ("/repos/org", "/repos/org")],
)
def test_path_normalisation(given_path: str, stored: str) -> None:
    assert svc(path=given_path).path == stored


@pytest.mark.parametrize("bad", ["v1", "/v1/../admin", "/a/%2e%2e/b", "/a%2Fb", "/a?x=1", "/a/*/b", "/a b"])
def test_bad_paths_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        svc(path=bad)


def test_methods_are_uppercased_and_deduped() -> None:
    assert svc(methods=["get", "GET", "post"]).methods == ["GET", "POST"]
    for bad in ([], ["GE T"], ["G\r\nX"]):
        with pytest.raises(ValidationError):
            svc(methods=bad)


def test_port_range() -> None:
    assert svc(port=8443).port == 8443
    for bad in (0, 65536, -1):
        with pytest.raises(ValidationError):
            svc(port=bad)


def test_name_and_description_rules() -> None:
    for bad in ("ab", "Upper", "-lead", "trail-", "dou--ble", "x" * 65):
        with pytest.raises(ValidationError):
            svc(name=bad)
    with pytest.raises(ValidationError):
        svc(description="x" * 501)
    assert svc(description="x" * 500).description == "x" * 500


def test_unknown_fields_and_auth_types_are_rejected() -> None:
    with pytest.raises(ValidationError):
        svc(colour="blue")
    with pytest.raises(ValidationError):
        svc(auth={"type": "oauth2", "token": "K"})
    with pytest.raises(ValidationError):
        svc(auth={"type": "bearer", "token": "K", "extra": 1})


def test_basic_needs_exactly_one_username() -> None:
    assert BasicAuth(username="U", password="P").referenced_keys() == ["U", "P"]
    assert BasicAuth(username_literal="api").referenced_keys() == []
    with pytest.raises(ValidationError):
        BasicAuth(password="P")
    with pytest.raises(ValidationError):
        BasicAuth(username="U", username_literal="api")
    with pytest.raises(ValidationError):
        BasicAuth(username_literal="a:b")


def test_api_key_targets() -> None:
    assert ApiKeyAuth(key="K").header_name == "Authorization"
    assert ApiKeyAuth(key="K", header="X-Api-Key").header_name == "X-Api-Key"
    assert ApiKeyAuth(key="K", query="key").header_name is None
    with pytest.raises(ValidationError):
        ApiKeyAuth(key="K", header="X-Api-Key", query="key")
    for forbidden in ("Host", "Proxy-Authorization", "X-Agent-Vault-Error", "Content-Length", "Bad Name"):
        with pytest.raises(ValidationError):
            ApiKeyAuth(key="K", header=forbidden)


def test_custom_templates() -> None:
    c = CustomAuth(headers={"X-Auth": "{{ A }}:{{B}}", "X-Other": "{{A}}"}, query={"sig": "{{ C }}"})
    assert c.referenced_keys() == ["A", "B", "C"]
    bad_templates: list[dict[str, Any]] = [
        {},
        {"headers": {"X-A": "{{ lower }}"}},
        {"headers": {"X-A": "{{ A }"}},
        {"headers": {"X-A": "v\r\nInjected: 1"}},
        {"headers": {"X-A": "1", "x-a": "2"}},
        {"headers": {"Bad Name": "1"}},
        {"query": {"": "{{A}}"}},
    ]
    for bad in bad_templates:
        with pytest.raises(ValidationError):
            CustomAuth.model_validate(bad)


def test_substitutions_alias_and_keys() -> None:
    s = svc(substitutions={"keys": ["A", "B", "A"], "in": ["body", "header", "body"]})
    assert s.substitutions.keys == ["A", "B"] and s.substitutions.in_ == ["body", "header"]
    assert s.substitution_keys == ["A", "B"]
    assert s.all_referenced_keys == ["K", "A", "B"]
    assert Substitutions(in_=["query"]).in_ == ["query"]
    with pytest.raises(ValidationError):
        svc(substitutions={"in": ["cookie"]})
    with pytest.raises(ValidationError):
        svc(substitutions={"keys": ["lower"]})


def test_round_trip_through_json_dump() -> None:
    s = svc(
        host="*.example.com",
        port=443,
        path="/v1/*",
        methods=["get"],
        auth={"type": "custom", "headers": {"X-Key": "k={{ K }}"}, "query": {"sig": "{{S}}"}},
        substitutions={"keys": ["K"], "in": ["body"]},
        redact_response=False,
        description="demo",
    )
    for exclude_none in (False, True):
        dumped = s.model_dump(mode="json", by_alias=True, exclude_none=exclude_none)
        assert "in" in dumped["substitutions"]
        assert ServiceDef.model_validate(dumped) == s
    assert ServiceDef.model_validate(s.model_dump(mode="json")) == s  # by field name too


def test_validation_errors_do_not_echo_secret_looking_input() -> None:
    secret = "sk-live-THIS-IS-A-PASTED-SECRET-123456"
    for data in (
        {"auth": {"type": "bearer", "token": secret}},
        {"auth": {"type": "custom", "headers": {"X-A": "{{ " + secret + " }}"}}},
        {"auth": {"type": "basic", "username_literal": secret + ":x"}},
    ):
        with pytest.raises(ValidationError) as exc:
            svc(**data)
        assert secret not in str(exc.value)
        # errors() always carries `input`; the API's 422 handler drops it (include_input=False).
        assert secret not in repr(exc.value.errors(include_input=False))


def test_validators_messages() -> None:
    assert validate_name("my-vault") == "my-vault"
    with pytest.raises(ValueError, match="'My_Vault'"):
        validate_name("My_Vault")
    assert validate_credential_key("OPENAI_API_KEY") == "OPENAI_API_KEY"
    with pytest.raises(ValueError) as exc:
        validate_credential_key("sk-secret-value")
    assert "sk-secret-value" not in str(exc.value)
    with pytest.raises(ValueError):
        validate_credential_key("K" * 129)
    with pytest.raises(ValueError):
        validate_credential_key("KEY\n")


json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
service_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=12) | st.just("svc-a"),
        "host": st.text(max_size=20) | st.sampled_from(["*.a.com", "*.com", "a.com", "[::1]"]),
        "port": json_values,
        "path": st.text(max_size=12) | st.just("/x/*"),
        "methods": json_values,
        "auth": json_values
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["bearer", "basic", "api-key", "custom", "passthrough", "x"])},
            optional={"token": json_values, "key": json_values, "headers": json_values, "query": json_values},
        ),
        "substitutions": json_values,
        "description": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(service_like)
def test_fuzzed_definitions_validate_or_fail_cleanly(data: dict[str, Any]) -> None:
    try:
        s = ServiceDef.model_validate(data)
    except ValidationError:
        return
    # Anything accepted is normalised and round-trips.
    assert s.host == s.host.lower() and s.path.startswith("/")
    dumped = s.model_dump(mode="json", by_alias=True)
    assert ServiceDef.model_validate(dumped) == s
