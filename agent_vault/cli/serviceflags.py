"""`vault service add|set` flags -> a validated SPEC §5.4 definition, and the one-line summary of a write.

Validation is the server's own (`ServiceDef`), run locally so a bad flag fails before any password
prompt; its errors name fields, never values.
"""

from __future__ import annotations

from typing import Any

import typer

from agent_vault import validation
from agent_vault.cli import choice
from agent_vault.cli.approvalflags import set_approval, set_limits
from agent_vault.cli.servicefile import SURFACES, AuthFlags, build_auth, parse_surfaces
from agent_vault.errors import InvalidRequest


def validate(definition: dict[str, Any]) -> dict[str, Any]:
    """Validate locally (the server's rules) and return the normalised definition; errors name fields only."""
    from pydantic import ValidationError

    from agent_vault.servicedef import ServiceDef

    try:
        svc = ServiceDef.model_validate(definition)
    except ValidationError as e:
        err = validation.fields(e.errors()[:1])[0]
        loc = err["loc"] or "definition"
        raise InvalidRequest(f"invalid service definition: {loc}: {err['msg']}") from None
    return svc.model_dump(mode="json", by_alias=True)


def definition(
    name: str,
    base: dict[str, Any] | None,
    *,
    host: str | None,
    port: int | None,
    path: str | None,
    method: list[str] | None,
    auth: AuthFlags,
    any_method: bool = False,
    any_port: bool = False,
    substitute: list[str] | None,
    substitute_in: str | None,
    redact: bool | None,
    forward_set_cookie: bool | None,
    enabled: bool | None,
    description: str | None,
    allow_http: bool | None = None,
    approval: tuple[bool | None, str | None, str | None] = (None, None, None),
    limits: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    d: dict[str, Any] = dict(base or {})
    set_approval(d, *approval)
    set_limits(d, *limits)
    d["name"] = name
    for k, v in (
        ("host", host),
        ("port", port),
        ("path", path),
        ("description", description),
        ("redact_response", redact),
        ("forward_set_cookie", forward_set_cookie),
        ("allow_http", allow_http),
        ("enabled", enabled),
    ):
        if v is not None:
            d[k] = v
    if method and any_method:
        raise typer.BadParameter("give --method or --any-method, not both", param_hint="--any-method")
    if port is not None and any_port:
        raise typer.BadParameter("give --port or --any-port, not both", param_hint="--any-port")
    if method:
        d["methods"] = [m.upper() for m in method]
    if any_method:
        d["methods"] = None
    if any_port:
        d["port"] = None
    if "host" not in d:
        raise InvalidRequest("--host is required (or --from-catalog ID)")
    if auth.auth_type or auth.any_field() or "auth" not in d:
        d["auth"] = build_auth(auth, None if auth.auth_type else d.get("auth"))
    if substitute or substitute_in:
        subs = dict(d.get("substitutions") or {})
        if substitute:
            subs["keys"] = substitute
        if substitute_in:
            subs["in"] = [
                choice(x, SURFACES, "--substitute-in") for x in parse_surfaces(substitute_in, strict=False)
            ]
        d["substitutions"] = subs
    return validate(d)


def keys_of(definition: dict[str, Any]) -> list[str]:
    """Every credential key a (validated) definition may send: its auth's keys for every auth type
    (custom header and query placeholders included), then its substitution keys."""
    from agent_vault.servicedef import ServiceDef

    return ServiceDef.model_validate(definition).all_referenced_keys


def summary(d: dict[str, Any], vault: str, verb: str, have: set[str], referenced: list[str]) -> str:
    """One line: what was added, and which referenced credentials still need a value (all of them)."""
    a = d.get("auth", {})
    keys = [k for k in referenced if k not in have]
    port = f":{d['port']}" if d.get("port") else ""
    text = f"{verb} service {d['name']} in vault {vault}: {d['host']}{port}{d['path']} ({a.get('type')})"
    if d.get("allow_http"):
        text += "; credentials also go over plain http://"
    if d.get("approval"):
        text += "; requests wait for approval ('agent-vault vault hold list')"
    if len(keys) == 1:
        text += f"; {keys[0]} has no value yet: set it with 'agent-vault vault credential set {keys[0]}'"
    elif keys:
        text += f"; {', '.join(keys)} have no value yet: set each with 'agent-vault vault credential set KEY'"
    return text
