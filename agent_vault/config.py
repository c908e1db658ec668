"""Server settings (SPEC §2.1): flags override AGENT_VAULT_* env vars override defaults.

Validated once at start; the rest of the code receives a frozen `Settings`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_vault import validation
from agent_vault.errors import InvalidRequest

RateProfile = Literal["default", "strict", "off"]


def default_home() -> Path:
    return Path(os.environ.get("AGENT_VAULT_HOME") or Path.home() / ".agent-vault").expanduser()


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = Field(default=14321, ge=0, le=65535)
    proxy_host: str | None = None
    proxy_port: int = Field(default=14322, ge=0, le=65535)
    disable_proxy: bool = False
    public_url: str | None = None
    database_url: str | None = Field(default=None, repr=False)  # may hold a password: never shown
    log_level: Literal["debug", "info", "warning"] = "info"
    allow_net: tuple[str, ...] = ()
    upstream_ca: Path | None = None
    max_request_bytes: int = 1 << 30
    max_buffered_bytes: int = 32 << 20
    rate_limits: RateProfile = "default"
    audit_retention_days: int = 30
    idle_timeout: int = 900
    auth_timeout: float = Field(default=10.0, gt=0)  # proxy connections that have not authenticated
    connect_timeout: float = Field(default=10.0, gt=0)  # upstream TCP (+ TLS on the fast path): else 504
    first_byte_timeout: float = Field(default=600.0, gt=0)  # request sent -> response head: else 504
    max_unauthenticated: int = Field(default=512, ge=1)  # proxy connections not authenticated yet
    no_step_up: bool = False
    fast_path: bool = True  # issue 24: serve eligible HTTP/1.1 connections on the lean loop
    offer_h2: bool = True  # off: intercepted TLS offers only http/1.1 (h2 clients fall back, go lean)
    freshness_bound: float = Field(default=30.0, gt=0)  # replicas: refuse proxy traffic past this (s)
    reuse_port: bool = False  # SO_REUSEPORT on both listeners: replicas on one host share the ports
    notify_url: tuple[str, ...] = ()  # webhooks for proposals and holds (issue 19); may hold secrets

    @field_validator("notify_url")
    @classmethod
    def _notify(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from agent_vault.notify import check_url

        return tuple(check_url(u) for u in v)

    @field_validator("fast_path", "offer_h2", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        if isinstance(v, str):
            if v.strip().lower() not in ("on", "off"):
                raise ValueError("must be on or off")
            return v.strip().lower() == "on"
        return v

    @field_validator("allow_net")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for c in v:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"--allow-net {c!r} is not a CIDR") from None
        return v

    @property
    def db_path(self) -> Path:
        return self.home / "agent-vault.db"

    @property
    def effective_proxy_host(self) -> str:
        return self.proxy_host or self.host

    def sqlalchemy_url(self) -> str:
        """The database URL: DATABASE_URL (sqlite:///PATH or postgresql://…), else the home's SQLite file.

        Danger: a postgresql URL may carry a password; never print it (store.engine.redact_url)."""
        url = self.database_url
        if url is None:
            return f"sqlite:///{self.db_path}"
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")):
            raise InvalidRequest(
                "DATABASE_URL must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
                hint="Check --database-url / DATABASE_URL.",
            )
        return url

    @property
    def uses_postgres(self) -> bool:
        return (self.database_url or "").startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


# field -> the environment variable it is read from (flags override it)
_ENV_VARS = {
    "host": "AGENT_VAULT_HOST",
    "port": "AGENT_VAULT_PORT",
    "proxy_host": "AGENT_VAULT_PROXY_HOST",
    "proxy_port": "AGENT_VAULT_PROXY_PORT",
    "public_url": "AGENT_VAULT_PUBLIC_URL",
    "database_url": "DATABASE_URL",
    "log_level": "AGENT_VAULT_LOG_LEVEL",
    "upstream_ca": "AGENT_VAULT_UPSTREAM_CA",
    "max_request_bytes": "AGENT_VAULT_MAX_REQUEST_BYTES",
    "max_buffered_bytes": "AGENT_VAULT_MAX_BUFFERED_BYTES",
    "rate_limits": "AGENT_VAULT_RATE_LIMITS",
    "audit_retention_days": "AGENT_VAULT_AUDIT_RETENTION_DAYS",
    "idle_timeout": "AGENT_VAULT_IDLE_TIMEOUT",
    "auth_timeout": "AGENT_VAULT_AUTH_TIMEOUT",
    "connect_timeout": "AGENT_VAULT_CONNECT_TIMEOUT",
    "first_byte_timeout": "AGENT_VAULT_FIRST_BYTE_TIMEOUT",
    "max_unauthenticated": "AGENT_VAULT_MAX_UNAUTHENTICATED",
    "fast_path": "AGENT_VAULT_FAST_PATH",
    "offer_h2": "AGENT_VAULT_OFFER_H2",
    "reuse_port": "AGENT_VAULT_REUSE_PORT",
    "freshness_bound": "AGENT_VAULT_FRESHNESS_BOUND",
}
_ENV_LISTS = {"allow_net": "AGENT_VAULT_ALLOW_NET", "notify_url": "AGENT_VAULT_NOTIFY_URL"}  # comma lists


def env_settings(**overrides: object) -> Settings:
    """Settings from AGENT_VAULT_* env vars, then explicit (non-None) overrides.

    An invalid value is one InvalidRequest: a value from the environment names its variable (the
    hint too: nothing on the command line is wrong), a flag's names the setting."""
    env = os.environ
    values: dict[str, object] = {}
    for field, var in _ENV_VARS.items():
        if env.get(var):
            values[field] = env[var]
    for field, var in _ENV_LISTS.items():
        if env.get(var):
            values[field] = tuple(x.strip() for x in env[var].split(",") if x.strip())
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    values.update(given)
    try:
        return Settings.model_validate(values)
    except ValidationError as e:
        first = validation.fields(e.errors()[:1])[0]
        field = first["loc"].split(".", 1)[0]
        env_var = _ENV_VARS.get(field) or _ENV_LISTS.get(field)
        if env_var is not None and field not in given:
            raise InvalidRequest(
                f"invalid {env_var}: {first['msg']}", hint=f"Fix {env_var} in the environment, or unset it."
            ) from None
        raise InvalidRequest(f"invalid setting {first['loc']}: {first['msg']}") from None
