"""Brokered auth types (issue #16): the proxy obtains the credential it injects on the agent's behalf.

* `oauth2-client-credentials`, `oauth2-refresh-token`, `token-exchange` (RFC 6749 §4.4, §6; RFC 8693):
  the proxy posts to `token_url` with the vault's client credentials and injects
  `Authorization: Bearer <access token>`.
* `aws-sigv4`: the proxy (re-)signs each request with AWS Signature Version 4, from static keys or
  from temporary keys of an STS AssumeRole (`role_arn`).

Like every service model these hold credential key NAMES only, never values, and hide their input
in validation errors. URLs must be `https://` without userinfo: a token endpoint receives secrets.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

BROKERED_AUTH_TYPES = ("oauth2-client-credentials", "oauth2-refresh-token", "token-exchange", "aws-sigv4")
OAUTH2_AUTH_TYPES = BROKERED_AUTH_TYPES[:3]
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a type URN
#: AWS services whose requests may carry `UNSIGNED-PAYLOAD` (a body too large to buffer and hash).
UNSIGNED_PAYLOAD_SERVICES = frozenset({"s3", "s3-object-lambda", "s3express"})

_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")  # RFC 6749 §3.3 scope-token
_TEXT = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z0-9]+){1,4}$")
_AWS_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")


def _key(s: str) -> str:
    from agent_vault.servicedef import validate_credential_key  # servicedef imports this module

    return validate_credential_key(s)


def validate_https_url(s: str) -> str:
    """An `https://host[:port]/path` URL without userinfo, fragment or control characters."""
    if len(s) > 2048 or re.search(r"[\x00-\x20\x7f]", s):
        raise ValueError("URL must be at most 2048 characters without spaces or control characters")
    parts = urlsplit(s)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("URL must start with https:// and name a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError("URL cannot carry user:password@ or a #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("URL has an invalid port") from None
    return s


Key = Annotated[str, AfterValidator(_key)]
HttpsUrl = Annotated[str, AfterValidator(validate_https_url)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class _OAuth2(_Model):
    """Fields every OAuth2 grant shares. `token_auth`: client credentials in HTTP Basic (default,
    RFC 6749 §2.3.1) or in the form body (`post`)."""

    token_url: HttpsUrl
    client_id: Key
    client_secret: Key
    scopes: list[str] = Field(default_factory=list, max_length=64)
    token_auth: Literal["basic", "post"] = "basic"  # noqa: S105 - a method name

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SCOPE.fullmatch(s):
                raise ValueError("each scope must be 1-256 printable characters without spaces, quotes or \\")
        return list(dict.fromkeys(v))

    def referenced_keys(self) -> list[str]:
        return list(dict.fromkeys(self._keys()))

    def _keys(self) -> list[str]:
        return [self.client_id, self.client_secret]


def _text(v: str | None) -> str | None:
    if v is not None and not _TEXT.fullmatch(v):
        raise ValueError("must be 1-512 printable characters without spaces")
    return v


class OAuth2ClientCredentialsAuth(_OAuth2):
    """RFC 6749 §4.4: `grant_type=client_credentials` (+ scope, audience)."""

    type: Literal["oauth2-client-credentials"] = "oauth2-client-credentials"
    audience: str | None = None

    @field_validator("audience")
    @classmethod
    def _audience(cls, v: str | None) -> str | None:
        return _text(v)


class OAuth2RefreshTokenAuth(_OAuth2):
    """RFC 6749 §6: `grant_type=refresh_token`. A rotated refresh token in the answer is sealed back
    into `refresh_token`'s credential."""

    type: Literal["oauth2-refresh-token"] = "oauth2-refresh-token"
    refresh_token: Key

    def _keys(self) -> list[str]:
        return [self.client_id, self.client_secret, self.refresh_token]


class TokenExchangeAuth(_OAuth2):
    """RFC 8693: `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` with the vault's
    `subject_token`."""

    type: Literal["token-exchange"] = "token-exchange"
    subject_token: Key
    subject_token_type: str = ACCESS_TOKEN_TYPE
    audience: str | None = None

    @field_validator("audience", "subject_token_type")
    @classmethod
    def _audience(cls, v: str | None) -> str | None:
        return _text(v)

    def _keys(self) -> list[str]:
        return [self.client_id, self.client_secret, self.subject_token]


class AwsSigV4Auth(_Model):
    """AWS Signature Version 4 for `service` in `region`. Keys from the vault, or (with `role_arn`)
    temporary keys from STS AssumeRole made with the vault's keys as base credentials."""

    type: Literal["aws-sigv4"] = "aws-sigv4"
    access_key_id: Key
    secret_access_key: Key
    session_token: Key | None = None
    region: str
    service: str
    role_arn: str | None = None
    external_id: Key | None = None
    sts_endpoint: HttpsUrl | None = None

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION.fullmatch(v):
            raise ValueError("region must be an AWS region name such as us-east-1")
        return v

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        if not _AWS_SERVICE.fullmatch(v):
            raise ValueError("service must be an AWS signing name such as s3, sqs or execute-api")
        return v

    @field_validator("role_arn")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        if v is not None and not _ROLE_ARN.fullmatch(v):
            raise ValueError("role_arn must look like arn:aws:iam::123456789012:role/NAME")
        return v

    @model_validator(mode="after")
    def _role_fields(self) -> AwsSigV4Auth:
        if self.role_arn is None and (self.external_id is not None or self.sts_endpoint is not None):
            raise ValueError("external_id and sts_endpoint need role_arn (STS assume-role)")
        return self

    @property
    def sts_url(self) -> str:
        """The STS endpoint: `sts_endpoint`, else the regional AWS endpoint."""
        return self.sts_endpoint or f"https://sts.{self.region}.amazonaws.com/"

    @property
    def unsigned_payload_allowed(self) -> bool:
        return self.service in UNSIGNED_PAYLOAD_SERVICES

    def referenced_keys(self) -> list[str]:
        keys = [self.access_key_id, self.secret_access_key, self.session_token, self.external_id]
        return list(dict.fromkeys(k for k in keys if k is not None))


OAuth2Auth = OAuth2ClientCredentialsAuth | OAuth2RefreshTokenAuth | TokenExchangeAuth
BrokeredAuth = OAuth2Auth | AwsSigV4Auth
