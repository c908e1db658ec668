"""Name rules (SPEC §3.2), shared by API schemas, the CLI and the domain."""

from __future__ import annotations

import re

from agent_vault.errors import InvalidRequest

# Always `fullmatch`: with `match`, `$` also matches before a trailing newline ("team\n" passed).
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]")
KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
RESERVED_VAULTS = {"users", "admin", "all"}


def shown(text: str) -> str:
    """`text`, which arrived where a name goes, as an error message may quote it: itself when it has a
    name's shape, else withheld (a token or value pasted there must not come back: SPEC §6)."""
    if 3 <= len(text) <= 64 and NAME_RE.fullmatch(text):
        return text
    return "(not a valid name: not shown)"


def check_name(name: str, what: str = "name") -> str:
    if not (3 <= len(name) <= 64) or not NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"invalid {what} {name[:80]!r}",
            hint="Use 3-64 lowercase letters, digits and single hyphens, not at either end.",
        )
    return name


def check_vault_name(name: str) -> str:
    check_name(name, "vault name")
    if name in RESERVED_VAULTS:
        raise InvalidRequest(
            f"vault name {name!r} is reserved", hint="Choose another: users, admin and all are reserved."
        )
    return name


def check_key(key: str) -> str:
    if len(key) > 128 or not KEY_RE.fullmatch(key):
        raise InvalidRequest(  # no echo: a "key" that fails the rule may be a pasted value
            "invalid credential key", hint="Use UPPER_SNAKE_CASE starting with a letter."
        )
    return key


def check_email(email: str) -> str:
    e = email.strip().lower()
    if len(e) > 254 or not EMAIL_RE.fullmatch(e):
        raise InvalidRequest("invalid email address")
    return e
