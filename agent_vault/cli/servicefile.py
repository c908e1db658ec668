"""Service definitions from flags and files, pure (no I/O besides reading the named file).

* `build_auth` / `apply_flags`: the `vault service add|set` flags -> a SPEC §5.4 service definition dict.
* `load_services_file`: YAML/TOML with a top-level `services:` list (see examples/services.yaml).
* `dump_services`: the inverse, YAML or TOML (nulls omitted: they are the defaults, and TOML has no null).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_vault.errors import InvalidRequest

AUTH_TYPES = (
    "bearer",
    "basic",
    "api-key",
    "custom",
    "passthrough",
    "oauth2-client-credentials",
    "oauth2-refresh-token",
    "token-exchange",
    "aws-sigv4",
)
#: Brokered auth type -> (field, flag) pairs it needs (SPEC §5.5 field names; issue #16).
_OAUTH2_NEEDS = (
    ("token_url", "--token-url"),
    ("client_id", "--client-id-key"),
    ("client_secret", "--client-secret-key"),
)
BROKERED_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "oauth2-client-credentials": _OAUTH2_NEEDS,
    "oauth2-refresh-token": (*_OAUTH2_NEEDS, ("refresh_token", "--refresh-token-key")),
    "token-exchange": (*_OAUTH2_NEEDS, ("subject_token", "--subject-token-key")),
    "aws-sigv4": (
        ("access_key_id", "--aws-access-key-id-key"),
        ("secret_access_key", "--aws-secret-access-key-key"),
        ("region", "--aws-region"),
        ("service", "--aws-service"),
    ),
}
SURFACES = ("header", "path", "query", "body", "websocket")
TOKEN_AUTH = ("basic", "post")  # oauth2 `token_auth`: client credentials in HTTP Basic or the form


@dataclass
class AuthFlags:
    auth_type: str | None = None
    token_key: str | None = None
    username_key: str | None = None
    username: str | None = None
    password_key: str | None = None
    api_key_key: str | None = None
    api_key_header: str | None = None
    api_key_query: str | None = None
    api_key_prefix: str | None = None
    custom_headers: list[str] = field(default_factory=list)
    brokered: dict[str, Any] = field(default_factory=dict)  # OAuth2/AWS fields (cli.authflags)

    def any_field(self) -> bool:
        return any(v for k, v in vars(self).items() if k != "auth_type")


def _need(value: str | None, flag: str, auth_type: str) -> str:
    if not value:
        raise InvalidRequest(f"auth type {auth_type} needs {flag}")
    return value


def build_auth(f: AuthFlags, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `auth` object: from scratch when --auth-type is given, else `base` updated with the given flags."""
    t = f.auth_type or (base or {}).get("type")
    if t not in AUTH_TYPES:
        raise InvalidRequest("--auth-type is required", hint=f"One of: {', '.join(AUTH_TYPES)}.")
    a: dict[str, Any] = {"type": t} if f.auth_type or base is None else dict(base)
    if t == "bearer":
        a["token"] = _need(f.token_key or a.get("token"), "--token-key", t)
    elif t == "basic":
        if f.username_key and f.username:
            raise InvalidRequest("use --username-key or --username, not both")
        if f.username_key:
            a.pop("username_literal", None)
            a["username"] = f.username_key
        elif f.username is not None:
            a.pop("username", None)
            a["username_literal"] = f.username
        if "username" not in a and "username_literal" not in a:
            raise InvalidRequest("auth type basic needs --username-key KEY or --username NAME")
        if f.password_key:
            a["password"] = f.password_key
    elif t == "api-key":
        a["key"] = _need(f.api_key_key or a.get("key"), "--api-key-key", t)
        if f.api_key_header and f.api_key_query:
            raise InvalidRequest("use --api-key-header or --api-key-query, not both")
        if f.api_key_header:
            a.pop("query", None)
            a["header"] = f.api_key_header
        if f.api_key_query:
            a.pop("header", None)
            a["query"] = f.api_key_query
        if f.api_key_prefix is not None:
            a["prefix"] = f.api_key_prefix
    elif t == "custom":
        headers = dict(a.get("headers") or {})
        for h in f.custom_headers:
            name, sep, template = h.partition(":")
            if not sep or not name.strip():
                raise InvalidRequest("--custom-header takes 'Name: template with {{ KEY }}'")
            headers[name.strip()] = template.strip()
        if not headers and not a.get("query"):
            raise InvalidRequest(
                "auth type custom needs --custom-header 'Name: {{ KEY }}' (or import a file)"
            )
        a["headers"] = headers
    elif t in BROKERED_NEEDS:
        a.update(f.brokered)
        for name, flag in BROKERED_NEEDS[t]:
            _need(a.get(name), flag, t)
    if f.brokered and t not in BROKERED_NEEDS:
        raise InvalidRequest(f"auth type {t} takes none of the OAuth2/AWS flags")
    return a


def parse_surfaces(text: str, *, strict: bool = True) -> list[str]:
    """The comma list of `--substitute-in`; `strict=False` leaves checking each item to the caller."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in SURFACES] if strict else []
    if bad or not items:
        raise InvalidRequest(f"--substitute-in takes a comma list of {', '.join(SURFACES)}")
    return items


def load_services_file(path: Path, text: str | None = None) -> list[dict[str, Any]]:
    """The `services:` list of a .yaml/.yml/.toml file (`text` given: read from stdin, YAML or TOML)."""
    import yaml

    name = str(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidRequest(f"cannot read {name}: {e.strerror or type(e).__name__}") from None
        except UnicodeDecodeError:
            raise InvalidRequest(f"cannot read {name}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ""):
        raise InvalidRequest(f"{name}: unsupported file type", hint="Use .yaml, .yml or .toml.")
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InvalidRequest(f"{name}: not valid {'TOML' if suffix == '.toml' else 'YAML'}{line}") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise InvalidRequest(f"{name}: expected a top-level 'services' list")
    services: list[dict[str, Any]] = data["services"]
    for i, s in enumerate(services):
        if not isinstance(s, dict):
            raise InvalidRequest(f"{name}: services[{i}] is not a mapping")
    return services


def strip_nulls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_nulls(v) for v in obj]
    return obj


def dump_services(services: list[dict[str, Any]], fmt: str) -> str:
    import yaml

    data = {"services": [strip_nulls(s) for s in services]}
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if fmt == "toml":
        return _toml(data["services"])
    raise InvalidRequest("--format must be yaml or toml")


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise InvalidRequest(f"cannot write {type(v).__name__} to TOML")


def _toml(services: list[dict[str, Any]]) -> str:
    """Array of tables `[[services]]`; nested objects as inline tables (all TOML 1.0)."""
    parts = []
    for s in services:
        lines = ["[[services]]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in s.items()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
