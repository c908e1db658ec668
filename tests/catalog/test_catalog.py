"""The built-in service catalog (SPEC §9.2)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from agent_vault.catalog import CatalogEntry, get_template, load_catalog

# SPEC §9.2 table: id -> (host, path, auth, suggested key or keys)
SPEC_TABLE: dict[str, tuple[str, str, dict[str, str], str | list[str]]] = {
    "github": ("api.github.com", "/", {"type": "bearer", "token": "GITHUB_TOKEN"}, "GITHUB_TOKEN"),
    "github-git": (
        "github.com",
        "/",
        {"type": "basic", "username_literal": "x-access-token", "password": "GITHUB_TOKEN"},
        "GITHUB_TOKEN",
    ),
    "openai": ("api.openai.com", "/", {"type": "bearer", "token": "OPENAI_API_KEY"}, "OPENAI_API_KEY"),
    "anthropic": (
        "api.anthropic.com",
        "/",
        {"type": "api-key", "key": "ANTHROPIC_API_KEY", "header": "x-api-key"},
        "ANTHROPIC_API_KEY",
    ),
    "gemini": (
        "generativelanguage.googleapis.com",
        "/",
        {"type": "api-key", "key": "GEMINI_API_KEY", "header": "x-goog-api-key"},
        "GEMINI_API_KEY",
    ),
    "stripe": ("api.stripe.com", "/", {"type": "bearer", "token": "STRIPE_SECRET_KEY"}, "STRIPE_SECRET_KEY"),
    "slack": ("slack.com", "/api", {"type": "bearer", "token": "SLACK_BOT_TOKEN"}, "SLACK_BOT_TOKEN"),
    "gitlab": (
        "gitlab.com",
        "/api",
        {"type": "api-key", "key": "GITLAB_TOKEN", "header": "PRIVATE-TOKEN"},
        "GITLAB_TOKEN",
    ),
    "linear": (
        "api.linear.app",
        "/",
        {"type": "api-key", "key": "LINEAR_API_KEY", "header": "Authorization"},
        "LINEAR_API_KEY",
    ),
    "notion": ("api.notion.com", "/", {"type": "bearer", "token": "NOTION_TOKEN"}, "NOTION_TOKEN"),
    "huggingface": ("huggingface.co", "/", {"type": "bearer", "token": "HF_TOKEN"}, "HF_TOKEN"),
    "discord": (
        "discord.com",
        "/api",
        {"type": "api-key", "key": "DISCORD_BOT_TOKEN", "header": "Authorization", "prefix": "Bot "},
        "DISCORD_BOT_TOKEN",
    ),
    # additions beyond the SPEC table
    "google": (
        "www.googleapis.com",
        "/",
        {"type": "bearer", "token": "GOOGLE_ACCESS_TOKEN"},
        "GOOGLE_ACCESS_TOKEN",
    ),
    "mistral": ("api.mistral.ai", "/", {"type": "bearer", "token": "MISTRAL_API_KEY"}, "MISTRAL_API_KEY"),
    "sentry": ("sentry.io", "/api", {"type": "bearer", "token": "SENTRY_AUTH_TOKEN"}, "SENTRY_AUTH_TOKEN"),
    # brokered auth types (issue #16)
    "google-oauth": (
        "www.googleapis.com",
        "/",
        {
            "type": "oauth2-refresh-token",
            "token_url": "https://oauth2.googleapis.com/token",
            "client_id": "GOOGLE_CLIENT_ID",
            "client_secret": "GOOGLE_CLIENT_SECRET",
            "refresh_token": "GOOGLE_REFRESH_TOKEN",
            "token_auth": "post",
        },
        ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "GOOGLE_REFRESH_TOKEN"],
    ),
    "aws-s3": (
        "*.s3.amazonaws.com",
        "/",
        {
            "type": "aws-sigv4",
            "access_key_id": "AWS_ACCESS_KEY_ID",
            "secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "region": "us-east-1",
            "service": "s3",
        },
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
    ),
}

KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")


def _referenced_keys(auth: dict[str, str]) -> list[str]:
    fields = ("token", "key", "username", "password", "client_id", "client_secret", "refresh_token")
    fields += ("subject_token", "access_key_id", "secret_access_key", "session_token", "external_id")
    return [auth[f] for f in fields if f in auth]


def test_every_entry_loads() -> None:
    entries = load_catalog()
    assert entries
    assert all(isinstance(e, CatalogEntry) for e in entries)


def test_exactly_the_expected_ids_in_order() -> None:
    assert [e.id for e in load_catalog()] == list(SPEC_TABLE)


def test_ids_unique_and_valid_service_names() -> None:
    ids = [e.id for e in load_catalog()]
    assert len(ids) == len(set(ids))
    for i in ids:
        assert 3 <= len(i) <= 64 and NAME_RE.fullmatch(i), i


@pytest.mark.parametrize("entry", load_catalog(), ids=lambda e: e.id)
def test_entry_fields(entry: CatalogEntry) -> None:
    assert entry.name
    assert entry.description and len(entry.description) <= 500
    assert entry.docs_url.startswith("https://")
    assert entry.suggested_keys
    for key in entry.suggested_keys:
        assert KEY_RE.fullmatch(key) and len(key) <= 128, key
    for key in _referenced_keys(entry.auth):
        assert KEY_RE.fullmatch(key), key
        assert key in entry.suggested_keys


@pytest.mark.parametrize("template_id", list(SPEC_TABLE))
def test_spec_table_values(template_id: str) -> None:
    host, path, auth, key = SPEC_TABLE[template_id]
    entry = get_template(template_id)
    assert entry.host == host
    assert entry.path == path
    assert entry.auth == auth
    assert entry.suggested_keys == (key if isinstance(key, list) else [key])


def test_get_template_unknown_raises_clear_key_error() -> None:
    with pytest.raises(KeyError) as info:
        get_template("nope")
    message = str(info.value)
    assert "nope" in message
    assert "github" in message


def test_entries_are_immutable() -> None:
    entry = get_template("github")
    with pytest.raises(ValidationError):
        entry.host = "evil.example.com"  # type: ignore[misc]


def test_load_catalog_returns_fresh_list() -> None:
    first = load_catalog()
    first.clear()
    assert load_catalog()


def test_service_definition_shape() -> None:
    entry = get_template("slack")
    definition = entry.service_definition("team-slack")
    assert definition == {
        "name": "team-slack",
        "host": "slack.com",
        "path": "/api",
        "auth": {"type": "bearer", "token": "SLACK_BOT_TOKEN"},
        "description": entry.description,
    }
    definition["auth"]["token"] = "OTHER"
    assert entry.auth["token"] == "SLACK_BOT_TOKEN"  # a copy, not the template's own dict


def test_entry_validation_rejects_bad_data() -> None:
    good = get_template("github").model_dump()
    with pytest.raises(ValidationError):
        CatalogEntry.model_validate({**good, "suggested_keys": ["lower_case"]})
    with pytest.raises(ValidationError):
        CatalogEntry.model_validate({**good, "id": "Bad_Id"})
    with pytest.raises(ValidationError):
        CatalogEntry.model_validate({**good, "auth": {"type": "oauth2"}})
    with pytest.raises(ValidationError):
        CatalogEntry.model_validate({**good, "unexpected": 1})


@pytest.mark.parametrize("entry", load_catalog(), ids=lambda e: e.id)
def test_service_definition_validates_as_servicedef(entry: CatalogEntry) -> None:
    servicedef = pytest.importorskip("agent_vault.servicedef")
    service = servicedef.ServiceDef.model_validate(entry.service_definition(entry.id))
    assert service.name == entry.id
    assert service.host == entry.host
    assert service.path == entry.path
    assert service.auth.type == entry.auth["type"]
    assert service.auth.referenced_keys() == _referenced_keys(entry.auth)
    assert service.port is None and service.methods is None and service.enabled


# ---- shipped examples and the agent guide ----------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
GUIDE_CODES = [
    "proxy_auth_required",
    "vault_required",
    "vault_forbidden",
    "service_not_allowed",
    "service_disabled",
    "method_not_allowed",
    "ssrf_blocked",
    "body_too_large",
    "rate_limited",
    "credential_not_found",
    "upstream_dns",
    "upstream_unreachable",
    "upstream_tls",
    "upstream_timeout",
    "internal",
]


def _packaged_guide() -> str:
    return resources.files("agent_vault").joinpath("data/agent-guide.md").read_text(encoding="utf-8")


def test_agent_guide_is_shipped_and_copied_to_examples() -> None:
    guide = _packaged_guide()
    assert (REPO / "examples" / "agent-guide.md").read_text(encoding="utf-8") == guide
    assert len(guide.splitlines()) <= 90


def test_agent_guide_content() -> None:
    guide = _packaged_guide()
    for code in GUIDE_CODES:
        assert f"`{code}`" in guide, code
    assert '"$AGENT_VAULT_ADDR/v1/discover"' in guide
    assert "Authorization: Bearer $AGENT_VAULT_TOKEN" in guide
    assert "{{KEY}}" in guide
    assert "/v1/proposals/" in guide
    assert "every 3 s for the first 30 s, then every 10 s" in guide
    # the SPEC §8 proposal example, verbatim as JSON
    block = guide.split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == {
        "services": [
            {
                "action": "set",
                "name": "stripe",
                "host": "api.stripe.com",
                "auth": {"type": "bearer", "token": "STRIPE_KEY"},
            }
        ],
        "credentials": [
            {
                "action": "set",
                "key": "STRIPE_KEY",
                "description": "test-mode secret key",
                "obtain": "https://dashboard.stripe.com/apikeys",
            }
        ],
        "message": "Need Stripe to create a test customer",
    }


def test_example_services_file_validates() -> None:
    servicedef = pytest.importorskip("agent_vault.servicedef")
    data = yaml.safe_load((REPO / "examples" / "services.yaml").read_text(encoding="utf-8"))
    services = [servicedef.ServiceDef.model_validate(s) for s in data["services"]]
    assert [s.name for s in services] == ["github", "anthropic", "acme-internal"]
    assert [s.auth.type for s in services] == ["bearer", "api-key", "custom"]
    assert services[2].all_referenced_keys == ["ACME_KEY_ID", "ACME_SECRET", "ACME_ACCOUNT_ID"]


def test_remote_agent_doc_mentions_the_essentials() -> None:
    text = (REPO / "examples" / "remote-agent.md").read_text(encoding="utf-8")
    for needle in ("AGENT_VAULT_TOKEN", "AGENT_VAULT_ADDR", "agent-vault ca fetch", "vault run"):
        assert needle in text
