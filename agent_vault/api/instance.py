"""Instance-wide routes: the service catalog (public) and CA rotation (owner, step-up) (SPEC §9, §9.2)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from agent_vault.api.deps import CoreDep, PrincipalDep
from agent_vault.catalog import load_catalog
from agent_vault.domain import ca
from agent_vault.schemas import StepUp

router = APIRouter()
J = dict[str, Any]


@router.get("/v1/catalog")
def catalog() -> J:
    """Built-in service templates (the data `agent-vault catalog list` shows). `auth` names credential
    KEYS and header names only; nothing here is secret, so no token is needed."""
    fields = ("id", "name", "description", "host", "path", "auth", "suggested_keys")
    return {"services": [e.model_dump(include=set(fields)) for e in load_catalog()]}


@router.post("/v1/ca/rotate")
def rotate_ca(core: CoreDep, p: PrincipalDep, body: StepUp | None = None) -> J:
    """Owner, step-up: a new MITM CA, served by /v1/mitm/ca.pem and used for new TLS connections at once."""
    return ca.rotate_ca(core, p, body.pw() if body else None)
