"""Proxy credential parsing (SPEC §5.2). Pure: no mitmproxy, no ORM.

Danger: the `Proxy-Authorization` value IS the bearer secret. It never appears in an exception
message, a repr or a log line; callers store and compare only `token_digest(token)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = [
    "MAX_PROXY_AUTHORIZATION",
    "TOKEN_PREFIXES",
    "MalformedProxyAuth",
    "ProxyCredentials",
    "parse_proxy_authorization",
    "token_digest",
    "token_kind",
]

MAX_PROXY_AUTHORIZATION = 4096

TOKEN_PREFIXES: dict[str, str] = {
    "av_usr_": "user",
    "av_agt_": "agent",
    "av_sess_": "session",
    "av_appr_": "approval",
    "av_inv_": "invite",
}

# Tokens and vault names are printable ASCII without spaces; anything else cannot be valid.
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


class MalformedProxyAuth(ValueError):
    """The Proxy-Authorization header cannot be parsed (-> 407). The message never includes the value.

    Internal to the pure parser, outside the errors.py tree on purpose: proxy.decide maps it to
    ProxyAuthRequired."""


@dataclass(frozen=True, slots=True)
class ProxyCredentials:
    """A presented proxy token and the optional vault hint from the Basic password part."""

    token: str = field(repr=False)
    vault_hint: str | None


def parse_proxy_authorization(value: str | None) -> ProxyCredentials | None:
    """Parse `Basic base64(token[:vault])` or `Bearer <token>` (scheme case-insensitive).

    None or blank -> None (no credential: the client may be probing for the 407 challenge).
    Basic: decoded as UTF-8, split at the FIRST colon, both parts URL-percent-decoded; an empty vault
    part gives `vault_hint=None`. Anything else -- unknown scheme, bad base64, non-UTF-8, control
    characters or spaces in token/vault, empty token, longer than 4096 characters -- raises
    MalformedProxyAuth with a fixed message.
    """
    if value is None or not value.strip():
        return None
    if len(value) > MAX_PROXY_AUTHORIZATION:
        raise MalformedProxyAuth("Proxy-Authorization is longer than 4096 characters")
    parts = value.strip().split(None, 1)
    if len(parts) != 2:
        raise MalformedProxyAuth("Proxy-Authorization must be 'Basic <base64>' or 'Bearer <token>'")
    scheme, rest = parts[0].lower(), parts[1].strip()
    if scheme == "bearer":
        return ProxyCredentials(_checked(rest, "token"), None)
    if scheme != "basic":
        raise MalformedProxyAuth("Proxy-Authorization scheme must be Basic or Bearer")
    try:
        decoded = base64.b64decode(rest.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        raise MalformedProxyAuth("Proxy-Authorization Basic credentials are not valid base64 UTF-8") from None
    user, _, password = decoded.partition(":")
    try:
        token = unquote(user, errors="strict")
        vault = unquote(password, errors="strict")
    except UnicodeError:
        raise MalformedProxyAuth("Proxy-Authorization percent-encoding is not valid UTF-8") from None
    return ProxyCredentials(_checked(token, "token"), _checked(vault, "vault name") if vault else None)


def _checked(s: str, what: str) -> str:
    if not s:
        raise MalformedProxyAuth(f"Proxy-Authorization {what} is empty")
    if not _PRINTABLE.fullmatch(s):
        raise MalformedProxyAuth(
            f"Proxy-Authorization {what} contains spaces, control or non-ASCII characters"
        )
    return s


def token_digest(token: str) -> str:
    """sha256 of the token's UTF-8 bytes, lowercase hex: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_kind(token: str) -> str | None:
    """`user`, `agent`, `session`, `approval` or `invite` from the (case-sensitive) prefix, else None."""
    for prefix, kind in TOKEN_PREFIXES.items():
        if token.startswith(prefix):
            return kind
    return None
