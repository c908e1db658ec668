"""OAuth2 access tokens for brokered services: client credentials (RFC 6749 §4.4), refresh token
(§6) and token exchange (RFC 8693), fetched through `TokenFetch` and cached in `TokenCache`.

The cache key is a digest of the vault, the service, its auth definition and every credential value
the grant sends, so rotating a client secret (or subject token) makes the next request fetch anew.
A refresh token the endpoint rotates is sealed back into its credential (`store_back`, off the
loop) and remembered here, so the chain goes on under the same key. When that credential comes from
a command or file source (`is_dynamic`), the rotated token is NOT stored (values from sources never
touch the database, and storing would silently replace the source): it is used from memory for this
server's life, and one warning names the service and key so whoever maintains the source updates it.

Danger: access, refresh and subject tokens and client secrets pass through here. They are sent
only to the token endpoint, never logged, never in an error (errors carry the endpoint's `error`
code, sanitised, or an HTTP status).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

from agent_vault.authtypes import (
    OAuth2Auth,
    OAuth2ClientCredentialsAuth,
    OAuth2RefreshTokenAuth,
    TokenExchangeAuth,
)
from agent_vault.errors import CredentialNotFound, CredentialUnavailable
from agent_vault.proxy.tokencache import TokenCache
from agent_vault.proxy.tokenfetch import Answer, TokenFetch, unavailable

log = logging.getLogger("agent_vault.proxy")
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
DEFAULT_LIFETIME = 300.0  # an answer without expires_in
MAX_LIFETIME = 86400.0
MAX_TOKEN_LEN = 16 * 1024
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # what a header value can carry unchanged

#: `store_back(vault, service, key, value)`: seal a rotated refresh token into the vault.
StoreBack = Callable[[str, str, str, str], Awaitable[None]]
#: `is_dynamic(vault, key)`: True when the key's value comes from a command or file source.
IsDynamic = Callable[[str, str], bool]


def no_sources(vault: str, key: str) -> bool:
    """The `is_dynamic` of a vault with no command or file sources (the default)."""
    return False


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _need(values: Mapping[str, str], key: str) -> str:
    v = values.get(key)
    if not v:
        raise CredentialNotFound(key)
    return v


def _lifetime(raw: object) -> float:
    try:
        n = float(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else None
    except ValueError:
        n = None
    if n is None or n != n or n <= 0:
        return DEFAULT_LIFETIME
    return min(n, MAX_LIFETIME)


def parse_answer(ans: Answer, service: str, host: str) -> dict[str, Any]:
    """The JSON object of a 200 answer with a usable `access_token`, or CredentialUnavailable naming
    the endpoint's `error` code (RFC 6749 §5.2) or its status."""
    try:
        data = json.loads(ans.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if ans.status != 200:
        code = data.get("error") if isinstance(data, dict) else None
        cause = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else f"http_{ans.status}"
        raise unavailable(service, host, cause)
    if not isinstance(data, dict):
        raise unavailable(service, host, "invalid_answer")
    token = data.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LEN or not _TOKEN_CHARS.match(token):
        raise unavailable(service, host, "invalid_access_token")
    return data


class OAuth2Tokens:
    """Access tokens per (vault, service, definition, credential values)."""

    def __init__(self, fetch: TokenFetch, store_back: StoreBack, is_dynamic: IsDynamic | None = None) -> None:
        self.fetch = fetch
        self.store_back = store_back
        self.is_dynamic = is_dynamic or no_sources
        self.cache: TokenCache[str] = TokenCache()
        self._latest_rt: dict[str, str] = {}  # cache key -> newest refresh token (rotated)
        self._rt_alias: dict[str, str] = {}  # digest of a rotated refresh token -> its chain's first

    def __repr__(self) -> str:
        return f"OAuth2Tokens({self.cache!r})"

    def _key(self, vault: str, service: str, auth: OAuth2Auth, values: Mapping[str, str]) -> str:
        secret = _need(values, auth.client_secret)
        grant: object = None
        if isinstance(auth, OAuth2RefreshTokenAuth):
            d = _digest(_need(values, auth.refresh_token))
            grant = self._rt_alias.get(d, d)
        elif isinstance(auth, TokenExchangeAuth):
            grant = _digest(_need(values, auth.subject_token))
        client_id = _need(values, auth.client_id)
        return _digest(vault, service, auth.model_dump(mode="json"), client_id, secret, grant)

    async def access_token(
        self, vault: str, service: str, auth: OAuth2Auth, values: Mapping[str, str]
    ) -> str:
        """The cached access token, or one fetched now (shared with concurrent callers)."""
        key = self._key(vault, service, auth, dict(values))
        snapshot = dict(values)

        async def fetch() -> tuple[str, float]:
            return await self._fetch(key, vault, service, auth, snapshot)

        return await self.cache.get(key, fetch, context=f"vault {vault}")

    def _form(self, key: str, auth: OAuth2Auth, values: Mapping[str, str]) -> dict[str, str]:
        form: dict[str, str] = {}
        if isinstance(auth, OAuth2ClientCredentialsAuth):
            form["grant_type"] = "client_credentials"
        elif isinstance(auth, OAuth2RefreshTokenAuth):
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self._latest_rt.get(key) or values[auth.refresh_token]
        else:
            form["grant_type"] = TOKEN_EXCHANGE_GRANT
            form["subject_token"] = values[auth.subject_token]
            form["subject_token_type"] = auth.subject_token_type
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        audience = getattr(auth, "audience", None)
        if audience:
            form["audience"] = audience
        return form

    async def _fetch(
        self, key: str, vault: str, service: str, auth: OAuth2Auth, values: Mapping[str, str]
    ) -> tuple[str, float]:
        host = urlsplit(auth.token_url).hostname or "?"
        form = self._form(key, auth, values)
        client_id, secret = values[auth.client_id], values[auth.client_secret]
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if auth.token_auth == "basic":  # noqa: S105 - RFC 6749 §2.3.1: form-encoded, then Basic
            pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"], form["client_secret"] = client_id, secret
        ans = await self.fetch.post(auth.token_url, urlencode(form).encode(), headers, service=service)
        data = parse_answer(ans, service, host)
        if isinstance(auth, OAuth2RefreshTokenAuth):
            await self._rotated(key, vault, service, auth, form["refresh_token"], data.get("refresh_token"))
        return str(data["access_token"]), _lifetime(data.get("expires_in"))

    async def _rotated(
        self, key: str, vault: str, service: str, auth: OAuth2RefreshTokenAuth, used: str, new: object
    ) -> None:
        """Keep the chain going with a rotated refresh token: in memory at once, sealed into the
        vault in the background of this fetch (a failure to store is logged, by key only) unless the
        key comes from a source: then memory only, and a warning (service and key, never the value)."""
        if not isinstance(new, str) or not new or new == used or len(new) > MAX_TOKEN_LEN:
            return
        if len(self._rt_alias) > 4096:
            self._rt_alias.clear()
        used_d = _digest(used)
        self._rt_alias[_digest(new)] = self._rt_alias.get(used_d, used_d)
        self._latest_rt[key] = new
        if self.is_dynamic(vault, auth.refresh_token):
            log.warning(
                "the token endpoint of service %s (vault %s) rotated the refresh token %s, whose value comes "
                "from a command or file source: the new refresh token is used from memory until the server "
                "restarts and is not stored; whoever maintains the source must update it (the old one may "
                "no longer work)",
                service,
                vault,
                auth.refresh_token,
            )
            return
        try:
            await self.store_back(vault, service, auth.refresh_token, new)
        except Exception as e:  # the token still works from memory; the admin sees the log line
            log.error(
                "could not store the rotated refresh token %s of service %s: %s",
                auth.refresh_token,
                service,
                type(e).__name__,
            )


__all__ = ["CredentialUnavailable", "OAuth2Tokens", "parse_answer"]
