"""The built-in service catalog (SPEC §9.2): templates for well-known APIs.

The data lives in `services.yaml` next to this module (package data). A template names credential KEYS only;
`CatalogEntry.service_definition(name)` turns it into a SPEC §5.4 service definition dict, ready for
`ServiceDef.model_validate`.
"""

from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CatalogEntry", "get_template", "load_catalog"]

_ID = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
_AUTH_TYPES = frozenset(
    {
        "bearer",
        "basic",
        "api-key",
        "custom",
        "passthrough",
        "oauth2-client-credentials",
        "oauth2-refresh-token",
        "token-exchange",
        "aws-sigv4",
    }
)
_CATALOG_FILE = "services.yaml"


class CatalogEntry(BaseModel):
    """One built-in template. Immutable; `auth` has the SPEC §5.5 shape, e.g. `{"type": "bearer",
    "token": "GITHUB_TOKEN"}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    description: str = Field(max_length=500)
    host: str
    path: str = "/"
    auth: dict[str, Any]
    suggested_keys: list[str]
    docs_url: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not (3 <= len(v) <= 64) or not _ID.fullmatch(v):
            raise ValueError(f"catalog id {v!r} must be a valid service name (lowercase, digits, hyphens)")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with /")
        return v

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") not in _AUTH_TYPES:
            raise ValueError(f"auth.type must be one of {', '.join(sorted(_AUTH_TYPES))}")
        return v

    @field_validator("suggested_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if len(key) > 128 or not _KEY.fullmatch(key):
                raise ValueError(f"suggested key {key!r} must match ^[A-Z][A-Z0-9_]*$")
        return v

    def service_definition(self, name: str) -> dict[str, Any]:
        """A SPEC §5.4 service definition named `name` (field names as in the API and import files)."""
        return {
            "name": name,
            "host": self.host,
            "path": self.path,
            "auth": copy.deepcopy(self.auth),
            "description": self.description,
        }


@functools.cache
def _entries() -> tuple[CatalogEntry, ...]:
    text = resources.files(__name__).joinpath(_CATALOG_FILE).read_text(encoding="utf-8")
    import yaml  # here, not at import: the server loads the catalog only when it is asked for

    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
        raise ValueError(f"{_CATALOG_FILE}: expected a mapping with a 'templates' list")
    entries = tuple(CatalogEntry.model_validate(item) for item in data["templates"])
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{_CATALOG_FILE}: duplicate template ids: {', '.join(duplicates)}")
    return entries


def load_catalog() -> list[CatalogEntry]:
    """Every built-in template, in catalog order."""
    return list(_entries())


def get_template(id: str) -> CatalogEntry:
    """The template with this id; KeyError naming the known ids if there is none."""
    for entry in _entries():
        if entry.id == id:
            return entry
    known = ", ".join(e.id for e in _entries())
    raise KeyError(f"no catalog template named {id!r}; known templates: {known}")
