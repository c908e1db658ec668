"""Approval-hold routes (issue 19): the vault's pending holds for humans (and the web console), the
agent's own, and the decisions. Rules in `agent_vault.domain.holds`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request

from agent_vault.api.deps import CoreDep, PrincipalDep, select_vault
from agent_vault.domain import holds
from agent_vault.schemas import Body, StepUp

router = APIRouter()
J = dict[str, Any]
HoldId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]


class HoldApprove(StepUp):
    scope: Literal["once", "1h", "always"] = "once"


class HoldDeny(Body):
    pass


@router.get("/v1/holds")
def list_my_holds(request: Request, core: CoreDep, p: PrincipalDep) -> J:
    """The caller's own pending holds (agents, sessions; vault from X-Vault or the session)."""
    vault = select_vault(core, p, request.headers.get("x-vault"))
    return holds.list_own(core, p, vault)


@router.get("/v1/vaults/{v}/holds")
def list_holds(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return holds.list_vault(core, p, v)


@router.post("/v1/vaults/{v}/holds/{hid}/approve")
def approve_hold(v: str, hid: HoldId, body: HoldApprove, core: CoreDep, p: PrincipalDep) -> J:
    return holds.approve(core, p, v, hid, body.scope, body.pw())


@router.post("/v1/vaults/{v}/holds/{hid}/deny")
def deny_hold(v: str, hid: HoldId, core: CoreDep, p: PrincipalDep, body: HoldDeny | None = None) -> J:
    return holds.deny(core, p, v, hid)
