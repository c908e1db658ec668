"""API request bodies. Secrets are SecretStr; validation errors never echo input."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class StepUp(Body):
    password: SecretStr | None = None

    def pw(self) -> str | None:
        return self.password.get_secret_value() if self.password else None


class LoginIn(Body):
    email: str = Field(max_length=254)
    password: SecretStr
    label: str = Field(default="", max_length=200)


class VaultCreate(Body):
    name: str


class VaultUpdate(StepUp):
    name: str | None = None
    unmatched_policy: str | None = None
    enforcement: str | None = None
    rate_limits: str | None = None  # default | strict | off | server (= follow --rate-limits)


class CredentialPut(Body):
    value: SecretStr
    description: str | None = Field(default=None, max_length=500)


class CredentialRotate(Body):
    value: SecretStr


class ServiceIn(StepUp):
    service: dict[str, Any]


class ServicesReplace(StepUp):
    services: list[dict[str, Any]]


class ServiceEnable(StepUp):
    enabled: bool


class VaultGrant(Body):
    vault: str
    role: str = "proxy"


class AgentCreate(StepUp):
    name: str
    vaults: list[VaultGrant] = []
    description: str = Field(default="", max_length=500)


class AgentRotate(StepUp):
    grace_seconds: int = 0


class GrantIn(StepUp):
    role: str


class SessionCreate(Body):
    vault: str | None = None
    ttl_seconds: int | None = None
    agent: str | None = None
    label: str = Field(default="", max_length=200)
    unmatched_policy: str | None = None
    only_services: list[str] | None = Field(default=None, max_length=100)  # narrowed session (issue 19)
    only_methods: list[str] | None = Field(default=None, max_length=32)


class SessionRenew(Body):
    ttl_seconds: int | None = None


class InviteCreate(StepUp):
    email: str
    role: str = "member"
    vaults: list[VaultGrant] = []


class InviteAccept(Body):
    password: SecretStr


class UserRole(StepUp):
    role: str
