"""Proposal routes (SPEC §8, §9): agent-facing /v1/proposals and admin /v1/vaults/{v}/proposals.

Browsers authenticate with the `av_ui` cookie; every state-changing request carried by that cookie
must also carry an `Origin` equal to this server's own origin (CSRF guard). Bearer requests skip it.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from agent_vault import crypto
from agent_vault.api.deps import CoreDep, PrincipalDep, RowId, bearer_token, select_vault
from agent_vault.core import Core
from agent_vault.domain import proposals
from agent_vault.domain.principal import Principal
from agent_vault.errors import Forbidden

router = APIRouter()
J = dict[str, Any]


class ApproveIn(BaseModel):
    """Danger: `credentials` holds values in clear; SecretStr keeps them out of reprs and errors."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    password: SecretStr | None = None
    credentials: dict[str, SecretStr] = Field(default_factory=dict, max_length=64)
    note: str | None = Field(default=None, max_length=proposals.MAX_TEXT)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    reason: str | None = Field(default=None, max_length=proposals.MAX_TEXT)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def allowed_origins(request: Request, core: Core) -> set[str]:
    """This server's own origins: the public URL, the bound API URL and the request's scheme + Host."""
    host = request.headers.get("host", "")
    own = {_origin(core.public_url), _origin(core.api_url), f"{request.url.scheme}://{host}".lower()}
    return own - {""}


def require_same_origin(request: Request, core: CoreDep) -> None:
    """CSRF guard for cookie-authenticated writes (SPEC §9): Origin must be ours. Bearer calls pass."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return
    if not request.cookies.get("av_ui"):
        return
    origin = request.headers.get("origin", "").rstrip("/").lower()
    if not origin or origin not in allowed_origins(request, core):
        raise Forbidden("cross-origin request refused", hint="Use the web UI served by this server.")


SameOrigin = Depends(require_same_origin)


def optional_principal(request: Request, core: CoreDep) -> Principal | None:
    token = bearer_token(request)
    return core.runtime.principal(crypto.digest(token)) if token else None


MaybePrincipal = Annotated[Principal | None, Depends(optional_principal)]


# -- agent-facing (vault from X-Vault or the session) --------------------------------------------


@router.post("/v1/proposals", status_code=201, dependencies=[SameOrigin])
def create_proposal(
    data: Annotated[dict[str, Any], Body()], request: Request, core: CoreDep, p: PrincipalDep
) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.create(core, p, vault, data)


@router.get("/v1/proposals")
def list_my_proposals(request: Request, core: CoreDep, p: PrincipalDep, status: str | None = None) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.list_own(core, p, vault, status)


@router.get("/v1/proposals/{pid}")
def get_my_proposal(pid: RowId, request: Request, core: CoreDep, p: PrincipalDep) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return proposals.get_own(core, p, vault, pid)


# -- admin ----------------------------------------------------------------------------------------


@router.get("/v1/vaults/{v}/proposals")
def list_proposals(v: str, core: CoreDep, p: PrincipalDep, status: str | None = None) -> J:
    return proposals.list_all(core, p, v, status)


@router.get("/v1/vaults/{v}/proposals/{pid}")
def get_proposal(v: str, pid: RowId, core: CoreDep, p: MaybePrincipal, token: str | None = None) -> J:
    return proposals.get_full(core, p, v, pid, token)


@router.post("/v1/vaults/{v}/proposals/{pid}/approve", dependencies=[SameOrigin])
def approve_proposal(v: str, pid: RowId, body: ApproveIn, core: CoreDep, p: PrincipalDep) -> J:
    values = {k: s.get_secret_value() for k, s in body.credentials.items()}
    password = body.password.get_secret_value() if body.password else None
    return proposals.approve(core, p, v, pid, password, values, body.note)


@router.post("/v1/vaults/{v}/proposals/{pid}/reject", dependencies=[SameOrigin])
def reject_proposal(v: str, pid: RowId, core: CoreDep, p: PrincipalDep, body: RejectIn | None = None) -> J:
    return proposals.reject(core, p, v, pid, body.reason if body else None)
