"""Proposal routes (SPEC §8, §9): agent-facing /v1/proposals and admin /v1/vaults/{v}/proposals.

Browsers authenticate with the `av_ui` cookie; the app-wide CSRF guard (`api.csrf`, run before any
route) refuses every state-changing request carried by that cookie unless its `Origin` is our own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_vault import crypto
from agent_vault.api.deps import CoreDep, PrincipalDep, RowId, bearer_token, select_vault
from agent_vault.domain import proposals
from agent_vault.domain.principal import Principal

router = APIRouter()
J = dict[str, Any]
#: `?status=`: anything else is a 422 like every other invalid parameter.
Status = Literal["pending", "applied", "rejected", "expired", "draft"]


class ApproveIn(BaseModel):
    """Danger: `credentials` holds values in clear; SecretStr keeps them out of reprs and errors."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    password: SecretStr | None = None
    credentials: dict[str, SecretStr] = Field(default_factory=dict, max_length=64)
    note: str | None = Field(default=None, max_length=proposals.MAX_TEXT)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    reason: str | None = Field(default=None, max_length=proposals.MAX_TEXT)


def optional_principal(request: Request, core: CoreDep) -> Principal | None:
    token = bearer_token(request)
    return core.runtime.principal(crypto.digest(token)) if token else None


MaybePrincipal = Annotated[Principal | None, Depends(optional_principal)]


# -- agent-facing (vault from X-Vault or the session) --------------------------------------------


@router.post("/v1/proposals", status_code=201)
def create_proposal(
    data: Annotated[dict[str, Any], Body()], request: Request, core: CoreDep, p: PrincipalDep
) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.create(core, p, vault, proposals.parse(data))


@router.get("/v1/proposals")
def list_my_proposals(request: Request, core: CoreDep, p: PrincipalDep, status: Status | None = None) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.list_own(core, p, vault, status)


@router.get("/v1/proposals/{pid}")
def get_my_proposal(pid: RowId, request: Request, core: CoreDep, p: PrincipalDep) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.get_own(core, p, vault, pid)


# -- admin ----------------------------------------------------------------------------------------


@router.get("/v1/vaults/{v}/proposals")
def list_proposals(v: str, core: CoreDep, p: PrincipalDep, status: Status | None = None) -> J:
    return proposals.list_all(core, p, v, status)


@router.get("/v1/vaults/{v}/proposals/{pid}")
def get_proposal(v: str, pid: RowId, core: CoreDep, p: MaybePrincipal, token: str | None = None) -> J:
    return proposals.get_full(core, p, v, pid, token)


@router.post("/v1/vaults/{v}/proposals/{pid}/approve")
def approve_proposal(v: str, pid: RowId, body: ApproveIn, core: CoreDep, p: PrincipalDep) -> J:
    values = {k: s.get_secret_value() for k, s in body.credentials.items()}
    password = body.password.get_secret_value() if body.password else None
    return proposals.approve(core, p, v, pid, password, values, body.note)


@router.post("/v1/vaults/{v}/proposals/{pid}/reject")
def reject_proposal(v: str, pid: RowId, core: CoreDep, p: PrincipalDep, body: RejectIn | None = None) -> J:
    return proposals.reject(core, p, v, pid, body.reason if body else None)
