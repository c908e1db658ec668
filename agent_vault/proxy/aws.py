"""AWS Signature Version 4 for `aws-sigv4` services: the keys (static from the vault, or temporary
from STS AssumeRole, cached and refreshed before expiry) and the signing of one request with
botocore's signer.

Signing replaces whatever the agent's SDK put there (it may run with placeholder keys): the
`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token` and `X-Amz-Content-SHA256` headers are
dropped and recomputed over the method, the path and query as sent, `host`, `content-type`,
`content-md5` and every other `x-amz-*` header, and the payload hash (`UNSIGNED-PAYLOAD` only for
services that accept it, e.g. S3, when the body is too large to buffer).

STS requests are signed with the vault's base keys and posted through `TokenFetch` (the egress
guard, pinned address, bounded answer). Danger: secret keys and session tokens live here in memory;
never logged, never in errors (STS errors carry the `<Code>` only).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from agent_vault.authtypes import AwsSigV4Auth
from agent_vault.errors import CredentialNotFound, CredentialUnavailable
from agent_vault.proxy.redact import value_forms
from agent_vault.proxy.tokencache import TokenCache
from agent_vault.proxy.tokenfetch import TokenFetch, host_header, unavailable

STS_DURATION = 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"  # botocore.auth.UNSIGNED_PAYLOAD (botocore loads on first signing)
#: Payload hashes an SDK may choose itself and the proxy keeps (services that allow unsigned payloads).
CLIENT_UNSIGNED = (UNSIGNED_PAYLOAD, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
_DROP = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
_SIGNED = ("content-type", "content-md5")
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class AwsKeys:
    """Signing keys. Danger: `secret_key` and `token` are secrets; the repr shows neither."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"AwsKeys(token={'yes' if self.token else 'no'})"

    def secrets(self, name: str) -> list[tuple[str, bytes]]:
        """(name, value) pairs to redact from responses."""
        values = [v for v in (self.access_key, self.secret_key, self.token) if v and len(v) >= 8]
        return [(name, form) for v in values for form in value_forms(v)]


__all__ = [
    "CLIENT_UNSIGNED",
    "UNSIGNED_PAYLOAD",
    "AwsCredentials",
    "AwsKeys",
    "parse_sts",
    "payload_hash",
    "sign",
]


def payload_hash(body: bytes | None) -> str:
    """The SigV4 payload hash of a complete body, or UNSIGNED-PAYLOAD for None."""
    return UNSIGNED_PAYLOAD if body is None else hashlib.sha256(body).hexdigest()


def sign(
    headers: MutableMapping[str, str],
    method: str,
    url: str,
    host: str,
    body_hash: str,
    keys: AwsKeys,
    service: str,
    region: str,
) -> list[str]:
    """Sign a request in place: `headers` lose the agent's signature headers and get ours.
    `url` is `https://authority/path?query` as sent; `host` the Host/:authority value. Returns
    the header names set (the addon scrubs them from the flow afterwards)."""
    for name in [k for k in headers if k.lower() in _DROP]:
        del headers[name]
    signed = {"host": host}
    for name in headers:
        low = name.lower()
        if low in _SIGNED or low.startswith("x-amz-"):
            signed[low] = headers[name]
    if service.startswith("s3") or body_hash in CLIENT_UNSIGNED:
        signed["x-amz-content-sha256"] = body_hash
    from agent_vault.proxy import aws_signer  # botocore (~4 MiB) only once an AWS service is used

    got = aws_signer.signature(method, url, signed, keys, service, region, body_hash)
    out = []
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
        value = got.get(name)
        if value is not None:
            headers[name] = value
            out.append(name)
    return out


def _need(values: Mapping[str, str], key: str) -> str:
    v = values.get(key)
    if not v:
        raise CredentialNotFound(key)
    return v


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_sts(body: bytes, service: str, host: str) -> tuple[AwsKeys, float]:
    """Keys and lifetime (seconds) from an AssumeRole answer, or CredentialUnavailable."""
    import xml.etree.ElementTree as ET  # here: only AssumeRole answers need it (idle RSS)

    try:
        # At most 64 KiB (TokenFetch); expat never fetches external entities and (>= 2.4.1, bundled)
        # stops entity-expansion bombs.
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError:
        raise unavailable(service, host, "invalid_answer", "AWS credentials") from None
    found = {_local(e.tag): (e.text or "").strip() for e in root.iter()}
    if "Credentials" not in found:
        code = found.get("Code", "")
        raise unavailable(
            service, host, code if _CODE.fullmatch(code) else "invalid_answer", "AWS credentials"
        )
    try:
        expires = datetime.fromisoformat(found["Expiration"].replace("Z", "+00:00"))
        keys = AwsKeys(found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"] or None)
    except (KeyError, ValueError):
        raise unavailable(service, host, "invalid_answer", "AWS credentials") from None
    if not keys.access_key or not keys.secret_key:
        raise unavailable(service, host, "invalid_answer", "AWS credentials")
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return keys, (expires - datetime.now(UTC)).total_seconds()


class AwsCredentials:
    """The keys of an aws-sigv4 service: the vault's, or STS temporary keys (cached per input)."""

    def __init__(self, fetch: TokenFetch) -> None:
        self.fetch = fetch
        self.cache: TokenCache[AwsKeys] = TokenCache()

    async def keys(self, vault: str, service: str, auth: AwsSigV4Auth, values: Mapping[str, str]) -> AwsKeys:
        token = _need(values, auth.session_token) if auth.session_token else None
        base = AwsKeys(_need(values, auth.access_key_id), _need(values, auth.secret_access_key), token)
        if auth.role_arn is None:
            return base
        external = _need(values, auth.external_id) if auth.external_id else None
        parts = [vault, service, auth.model_dump_json(), base.access_key, base.secret_key]
        key = hashlib.sha256("\0".join([*parts, token or "", external or ""]).encode()).hexdigest()

        async def fetch() -> tuple[AwsKeys, float]:
            return await self._assume(service, auth, base, external)

        return await self.cache.get(key, fetch, context=f"vault {vault}")

    async def _assume(
        self, service: str, auth: AwsSigV4Auth, base: AwsKeys, external: str | None
    ) -> tuple[AwsKeys, float]:
        assert auth.role_arn is not None
        url = auth.sts_url
        parts = urlsplit(url)
        host = host_header(parts.hostname or "", parts.port or 443)
        form = {
            "Action": "AssumeRole",
            "Version": "2011-06-15",
            "RoleArn": auth.role_arn,
            "RoleSessionName": f"agent-vault-{service}"[:64],
            "DurationSeconds": str(STS_DURATION),
        }
        if external:
            form["ExternalId"] = external
        body = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        sign(headers, "POST", url, host, payload_hash(body), base, "sts", auth.region)
        started = time.monotonic()
        what, name = "AWS credentials", parts.hostname or "?"
        ans = await self.fetch.post(url, body, {"Host": host, **headers}, service=service, what=what)
        if ans.status != 200:
            try:
                parse_sts(ans.body, service, name)  # an <ErrorResponse>: raises with its <Code>
            except CredentialUnavailable as e:
                if e.extra.get("cause") != "invalid_answer":
                    raise
            raise unavailable(service, name, f"http_{ans.status}", what)
        keys, lifetime = parse_sts(ans.body, service, name)
        return keys, lifetime - (time.monotonic() - started)
