"""API request bodies. Secrets are SecretStr; validation errors never echo input."""

from __future__ import annotations

from typing import Any, Literal

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


class CredentialSource(Body):
    """A dynamic source (credsource.SourceSpec). The command may embed a secret: SecretStr."""

    kind: Literal["command", "file"]
    command: SecretStr | None = Field(default=None, max_length=4096)
    shell: bool = False
    path: str | None = Field(default=None, max_length=4096)
    ttl: str | float | None = None
    timeout: str | float | None = None

    def spec_input(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.command is not None:
            d["command"], d["shell"] = self.command.get_secret_value(), self.shell
        elif self.shell:
            d["shell"] = True
        if self.path is not None:
            d["path"] = self.path
        if self.ttl is not None:
            d["ttl"] = self.ttl
        if self.timeout is not None:
            d["timeout"] = self.timeout
        return d


class CredentialPut(StepUp):
    """Exactly one of `value` (stored, sealed) and `source` (owner + step-up `password`)."""

    value: SecretStr | None = None
    source: CredentialSource | None = None
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


class SessionSettle(Body):
    wait_seconds: float = Field(2.0, ge=0, le=10)


class InviteCreate(StepUp):
    email: str
    role: str = "member"
    vaults: list[VaultGrant] = []


class InviteAccept(Body):
    password: SecretStr


class UserRole(StepUp):
    role: str
