"""Service definitions (SPEC §5.4-§5.6): which credential keys go to which host/port/path/method, and how.

Models hold key NAMES only, never credential values. They still hide their input in validation errors
(`hide_input_in_errors=True`), and key/template errors never repeat the offending text, because humans
paste secrets into the wrong field. `model_dump(mode="json", by_alias=True)` round-trips through
`ServiceDef.model_validate`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_vault.authtypes import (
    BROKERED_AUTH_TYPES,
    AwsSigV4Auth,
    OAuth2ClientCredentialsAuth,
    OAuth2RefreshTokenAuth,
    TokenExchangeAuth,
)
from agent_vault.hostpath import InvalidHost, ip_of, normalize_host, path_is_safe

#: Shown to agents (discover, proposal hints).
SUPPORTED_AUTH_TYPES = ["bearer", "basic", "api-key", "custom", "passthrough", *BROKERED_AUTH_TYPES]
NAME_RE = r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$"
CREDENTIAL_KEY_RE = r"^[A-Z][A-Z0-9_]*$"
CREDENTIAL_KEY_MAX = 128
FIELD_NAME_RE = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
#: `{{KEY}}` or `{{ KEY }}` (spaces optional); group 1 is the key.
PLACEHOLDER_PATTERN = r"\{\{ *([A-Z][A-Z0-9_]{0,127}) *\}\}"
#: Header names an auth spec may not inject: framing, routing and proxy-control headers.
FORBIDDEN_INJECT_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-vault",
    }
)

_NAME = re.compile(NAME_RE)
_KEY = re.compile(CREDENTIAL_KEY_RE)
_TOKEN = re.compile(FIELD_NAME_RE)
_PLACEHOLDER = re.compile(PLACEHOLDER_PATTERN)
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_CRLFNUL = re.compile(r"[\r\n\x00]")
_HTTP_METHODS_MAX = 32
#: Written in a method list, these mean "any method" (stored as null), as `*` does in discover.
ANY_METHOD = frozenset({"*", "ALL", "ANY"})


def normalize_methods(v: list[str], what: str) -> list[str] | None:
    """Upper-cased, deduplicated HTTP methods; `*`, `ALL` or `ANY` alone means any method (None).
    The message never repeats the input."""
    out = _dedupe([m.strip().upper() for m in v])
    if any(m in ANY_METHOD for m in out):
        if len(out) > 1:
            raise ValueError(f"{what}: '*' (or ALL/ANY) means any method and must be given alone")
        return None
    if not out or any(len(m) > _HTTP_METHODS_MAX or not _TOKEN.fullmatch(m) for m in out):  # RFC 9110 token
        raise ValueError(f"{what} must be HTTP methods such as GET or POST, or '*' alone for any method")
    return out


def validate_name(s: str) -> str:
    """Check a vault/agent/service name (SPEC §3.2). Names are not secret, so the message repeats it."""
    if not (3 <= len(s) <= 64) or not _NAME.fullmatch(s):
        shown = repr(s) if len(s) <= 64 else "(too long)"
        raise ValueError(
            f"name {shown} must be 3-64 characters of lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
    return s


def validate_credential_key(s: str) -> str:
    """Check a credential key name. The message never repeats the input: it may be a pasted value."""
    if len(s) > CREDENTIAL_KEY_MAX or not _KEY.fullmatch(s):
        raise ValueError(
            "credential key must be uppercase letters, digits and underscores, start with a letter "
            f"and be at most {CREDENTIAL_KEY_MAX} characters (for example OPENAI_API_KEY)"
        )
    return s


def validate_header_name(s: str) -> str:
    """An HTTP token that an auth spec may inject (not a framing or proxy-control header)."""
    if not _TOKEN.fullmatch(s) or len(s) > 256:
        raise ValueError("header name must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)")
    low = s.lower()
    if low in FORBIDDEN_INJECT_HEADERS or low.startswith("x-agent-vault-"):
        raise ValueError(f"header {s} cannot be injected (framing or proxy-control header)")
    return s


def validate_host_pattern(s: str) -> str:
    """Normalise a service host: exact hostname, IP literal, or `*.parent` with a multi-label parent."""
    raw = s.strip()
    wildcard = raw.startswith("*.")
    rest = raw[2:] if wildcard else raw
    if "*" in rest:
        raise ValueError("host may contain '*' only as a whole first label, as in *.example.com")
    try:
        host = normalize_host(rest)
    except InvalidHost as exc:
        raise ValueError(str(exc)) from None
    if wildcard:
        if ip_of(host) is not None:
            raise ValueError("a wildcard host cannot cover an IP address")
        if "." not in host:
            raise ValueError("a wildcard host must cover a domain of at least two labels, not a TLD")
        return "*." + host
    return host


def _check_template(t: str) -> str:
    if _CRLFNUL.search(t):
        raise ValueError("template contains CR, LF or NUL")
    rest = _PLACEHOLDER.sub("", t)
    if "{{" in rest or "}}" in rest:
        raise ValueError("template references must be written {{ KEY }} with KEY an uppercase credential key")
    return t


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


CredentialKey = Annotated[str, AfterValidator(validate_credential_key)]
Surface = Literal["header", "path", "query", "body", "websocket"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class BearerAuth(_Model):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer"] = "bearer"
    token: CredentialKey

    def referenced_keys(self) -> list[str]:
        return [self.token]


class BasicAuth(_Model):
    """`Authorization: Basic base64(user:password)`; user from a key or a literal, password optional."""

    type: Literal["basic"] = "basic"
    username: CredentialKey | None = None
    username_literal: str | None = Field(default=None, max_length=256)
    password: CredentialKey | None = None

    @model_validator(mode="after")
    def _one_username(self) -> BasicAuth:
        if (self.username is None) == (self.username_literal is None):
            raise ValueError("basic auth needs exactly one of username (a key) or username_literal")
        if self.username_literal is not None and (
            ":" in self.username_literal or _CTL.search(self.username_literal)
        ):
            raise ValueError("username_literal cannot contain ':' or control characters")
        return self

    def referenced_keys(self) -> list[str]:
        return _dedupe([k for k in (self.username, self.password) if k is not None])


class ApiKeyAuth(_Model):
    """`<header>: <prefix><value>` (default header Authorization) or query `<param>=<prefix><value>`."""

    type: Literal["api-key"] = "api-key"
    key: CredentialKey
    header: str | None = None
    query: str | None = Field(default=None, min_length=1, max_length=256)
    prefix: str = Field(default="", max_length=256)

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else validate_header_name(v)

    @field_validator("query", "prefix")
    @classmethod
    def _no_ctl(cls, v: str | None) -> str | None:
        if v is not None and _CTL.search(v):
            raise ValueError("query parameter names and prefixes cannot contain control characters")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> ApiKeyAuth:
        if self.header is not None and self.query is not None:
            raise ValueError("api-key auth takes header or query, not both")
        return self

    @property
    def header_name(self) -> str | None:
        """The header injected into, or None when the key goes into the query."""
        if self.query is not None:
            return None
        return self.header or "Authorization"

    def referenced_keys(self) -> list[str]:
        return [self.key]


class CustomAuth(_Model):
    """Header and query templates mixing literal text with `{{ KEY }}` references."""

    type: Literal["custom"] = "custom"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, template in v.items():
            validate_header_name(name)
            if name.lower() in seen:
                raise ValueError(f"header {name} is given twice (names are case-insensitive)")
            seen.add(name.lower())
            _check_template(template)
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v: dict[str, str]) -> dict[str, str]:
        for name, template in v.items():
            if not name or _CTL.search(name):
                raise ValueError("query parameter names must be non-empty without control characters")
            _check_template(template)
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> CustomAuth:
        if not self.headers and not self.query:
            raise ValueError("custom auth needs at least one header or query template")
        return self

    def referenced_keys(self) -> list[str]:
        templates = [*self.headers.values(), *self.query.values()]
        return _dedupe([m.group(1) for t in templates for m in _PLACEHOLDER.finditer(t)])


class PassthroughAuth(_Model):
    """Nothing injected: the host is simply allowed."""

    type: Literal["passthrough"] = "passthrough"

    def referenced_keys(self) -> list[str]:
        return []


Auth = Annotated[
    BearerAuth
    | BasicAuth
    | ApiKeyAuth
    | CustomAuth
    | PassthroughAuth
    | OAuth2ClientCredentialsAuth
    | OAuth2RefreshTokenAuth
    | TokenExchangeAuth
    | AwsSigV4Auth,
    Field(discriminator="type"),
]


def _default_surfaces() -> list[Surface]:
    return ["header", "path", "query"]


class Substitutions(BaseModel):
    """Which keys agents may reference as `{{KEY}}` placeholders, and where (SPEC §5.6)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, populate_by_name=True)

    keys: list[CredentialKey] | None = None
    in_: list[Surface] = Field(default_factory=_default_surfaces, alias="in")

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _dedupe(v)

    @field_validator("in_")
    @classmethod
    def _surfaces(cls, v: list[Surface]) -> list[Surface]:
        return list(dict.fromkeys(v))


class Approval(_Model):
    """`approval_required` (issue 19): matching requests wait for a human's decision before they go
    upstream. `methods` None = every method; `exempt` lists the actors (`agent:NAME`, `user:EMAIL`) a
    human approved "always" for this service."""

    methods: list[str] | None = None
    timeout_seconds: int = Field(default=120, ge=1, le=3600)
    exempt: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else normalize_methods(v, "approval methods")

    @field_validator("exempt")
    @classmethod
    def _exempt(cls, v: list[str]) -> list[str]:
        if any(len(a) > 300 or _CTL.search(a) for a in v):
            raise ValueError("approval exemptions are actor labels such as agent:ci-bot")
        return _dedupe(v)

    def applies(self, method: str, actor: str) -> bool:
        """True when a request by `actor` (owner label) with `method` must be held."""
        return (self.methods is None or method in self.methods) and actor not in self.exempt


class ServiceDef(_Model):
    """One service of a vault. `host`, `path` and `methods` are stored normalised."""

    name: Annotated[str, AfterValidator(validate_name)]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = "/"
    methods: list[str] | None = None
    enabled: bool = True
    auth: Auth
    substitutions: Substitutions = Field(default_factory=Substitutions)
    redact_response: bool | None = None
    forward_set_cookie: bool | None = None
    #: Plain `http://` (absolute-form, or plaintext inside CONNECT) may carry this service's credentials.
    #: Off: such a request gets 403 `insecure_scheme` and the upstream is never contacted.
    allow_http: bool = False
    description: str = Field(default="", max_length=500)
    #: Issue 19: hold matching requests until a human approves (None: never held).
    approval: Approval | None = None
    #: Requests per agent token and window, `N/min|hour|day` (agent_vault.quota); over it: 429.
    quota: str | None = None
    #: LLM tokens per window for the whole service, `N/day|month` (agent_vault.usage); spent: 429.
    token_budget: str | None = None

    @field_validator("quota")
    @classmethod
    def _quota(cls, v: str | None) -> str | None:
        from agent_vault.quota import parse_quota  # a pure leaf

        return None if v is None else str(parse_quota(v))

    @field_validator("token_budget")
    @classmethod
    def _budget(cls, v: str | None) -> str | None:
        from agent_vault.usage import parse_budget  # a pure leaf

        return None if v is None else str(parse_budget(v))

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return validate_host_pattern(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with /")
        if v.endswith("/*"):
            v = v[:-2] or "/"
        if _CTL.search(v) or " " in v or "?" in v or "#" in v:
            raise ValueError("path cannot contain spaces, control characters, '?' or '#'")
        if "*" in v:
            raise ValueError("path accepts '*' only as a trailing /*")
        if not path_is_safe(v):
            raise ValueError("path cannot contain . or .. segments, backslashes or encoded / or \\")
        if len(v) > 1:
            v = v.rstrip("/") or "/"
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError(
                "methods must be null (all methods) or a non-empty list; disable the service instead"
            )
        return normalize_methods(v, "methods")

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")

    @property
    def injects(self) -> bool:
        """True when this service injects credentials (any auth type but passthrough)."""
        return self.auth.type != "passthrough"

    @property
    def sends_credentials(self) -> bool:
        """True when a request matched to this service may carry a credential value upstream: it
        injects, or agents may substitute `{{KEY}}` placeholders. Such requests get the strict path
        checks (`invalid_path`), redaction, Set-Cookie stripping and the https-only rule."""
        return self.injects or bool(self.substitution_keys)

    @property
    def effective_redact(self) -> bool:
        return self.sends_credentials if self.redact_response is None else self.redact_response

    @property
    def effective_forward_set_cookie(self) -> bool:
        if self.forward_set_cookie is None:
            return not self.sends_credentials
        return self.forward_set_cookie

    @property
    def substitution_keys(self) -> list[str]:
        """Keys agents may write as placeholders: `substitutions.keys`, else the keys `auth` references
        (none for brokered auth types: client secrets and base keys only go to the token endpoint)."""
        keys = self.substitutions.keys
        if keys is None and self.auth.type in BROKERED_AUTH_TYPES:
            return []
        return list(keys) if keys is not None else self.auth.referenced_keys()

    @property
    def all_referenced_keys(self) -> list[str]:
        """Every key this service may send: auth references then substitution keys, in order, deduped."""
        return _dedupe([*self.auth.referenced_keys(), *self.substitution_keys])
