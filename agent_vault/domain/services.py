"""Services of a vault: human admins only, step-up for every write (SPEC §3.3, §5.4).

Every write rebuilds the matching index before it answers, so the next proxied request sees it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from agent_vault import validation
from agent_vault.core import Core
from agent_vault.domain.common import get_vault, step_up
from agent_vault.domain.principal import Principal
from agent_vault.errors import Conflict, InvalidRequest, NotFound
from agent_vault.models import Service, Vault
from agent_vault.servicedef import ServiceDef


def parse_service(data: Any) -> ServiceDef:
    """Validate a service definition; errors name fields, never input values."""
    if isinstance(data, ServiceDef):
        return data
    try:
        return ServiceDef.model_validate(data)
    except ValidationError as e:
        fields = validation.fields(e.errors())
        first = fields[0] if fields else {"loc": "", "msg": "invalid"}
        raise InvalidRequest(
            f"invalid service definition: {first['loc']}: {first['msg']}", fields=fields
        ) from None


def public(svc: ServiceDef) -> dict[str, Any]:
    return svc.model_dump(mode="json", by_alias=True)


def _row_def(svc: ServiceDef) -> str:
    return json.dumps(public(svc), sort_keys=True)


def list_services(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    p.require(vault, "proxy")
    view = core.runtime.snapshot.vaults.get(vault)
    if view is None:
        raise NotFound(f"vault {vault} not found", hint="List vaults with 'agent-vault vault list'.")
    return {"services": [public(svc) for svc in view.services]}


def get_service(core: Core, p: Principal, vault: str, name: str) -> dict[str, Any]:
    for svc in list_services(core, p, vault)["services"]:
        if svc["name"] == name:
            return svc  # type: ignore[no-any-return]
    raise NotFound(
        f"service {name} not found in vault {vault}", hint="List them with 'agent-vault vault service list'."
    )


def _rows(s: Session, v: Vault) -> list[Service]:
    return list(s.exec(select(Service).where(Service.vault_id == v.id).order_by(col(Service.position))))


def upsert_in_tx(s: Session, v: Vault, svc: ServiceDef, *, create_only: bool = False) -> str:
    """Insert or replace by name inside an open transaction; returns 'add' or 'update'."""
    rows = _rows(s, v)
    existing = next((r for r in rows if r.name == svc.name), None)
    if existing is not None:
        if create_only:
            raise Conflict(f"service {svc.name} already exists in vault {v.name}")
        existing.definition = _row_def(svc)
        existing.enabled = svc.enabled
        s.add(existing)
        return "update"
    assert v.id is not None
    pos = (rows[-1].position + 1) if rows else 0
    s.add(Service(vault_id=v.id, name=svc.name, position=pos, enabled=svc.enabled, definition=_row_def(svc)))
    return "add"


def delete_in_tx(s: Session, v: Vault, name: str) -> None:
    row = next((r for r in _rows(s, v) if r.name == name), None)
    if row is None:
        raise NotFound(
            f"service {name} not found in vault {v.name}",
            hint="List them with 'agent-vault vault service list'.",
        )
    s.delete(row)


def add_service(
    core: Core, p: Principal, vault: str, password: str | None, data: Any, *, replace: bool = False
) -> dict[str, Any]:
    p.require(vault, "admin", human=True)
    svc = parse_service(data)
    step_up(core, p, password)
    with core.store.write() as s:
        action = upsert_in_tx(s, get_vault(s, vault), svc, create_only=not replace)
    core.runtime.reload()
    core.record(f"service.{action}", p.actor, vault=vault, target=svc.name)
    return public(svc)


def set_enabled(
    core: Core, p: Principal, vault: str, password: str | None, name: str, enabled: bool
) -> dict[str, Any]:
    p.require(vault, "admin", human=True)
    step_up(core, p, password)
    with core.store.write() as s:
        v = get_vault(s, vault)
        row = next((r for r in _rows(s, v) if r.name == name), None)
        if row is None:
            raise NotFound(
                f"service {name} not found in vault {vault}",
                hint="List them with 'agent-vault vault service list'.",
            )
        d = json.loads(row.definition)
        d["enabled"] = enabled
        row.definition = json.dumps(d, sort_keys=True)
        row.enabled = enabled
        s.add(row)
    core.runtime.reload()
    core.record("service.update", p.actor, vault=vault, target=name, details={"enabled": enabled})
    return get_service(core, p, vault, name)


def remove_service(core: Core, p: Principal, vault: str, password: str | None, name: str) -> None:
    p.require(vault, "admin", human=True)
    step_up(core, p, password)
    with core.store.write() as s:
        delete_in_tx(s, get_vault(s, vault), name)
    core.runtime.reload()
    core.record("service.remove", p.actor, vault=vault, target=name)


def replace_services(
    core: Core, p: Principal, vault: str, password: str | None, data: Sequence[Any]
) -> dict[str, Any]:
    """Full replace (import), atomic: every definition validates or nothing changes."""
    p.require(vault, "admin", human=True)
    svcs = [parse_service(d) for d in data]
    names = [x.name for x in svcs]
    if len(set(names)) != len(names):
        raise InvalidRequest("duplicate service names in the import")
    step_up(core, p, password)
    with core.store.write() as s:
        v = get_vault(s, vault)
        for row in _rows(s, v):
            s.delete(row)
        s.flush()
        assert v.id is not None
        for pos, svc in enumerate(svcs):
            s.add(
                Service(
                    vault_id=v.id, name=svc.name, position=pos, enabled=svc.enabled, definition=_row_def(svc)
                )
            )
    core.runtime.reload()
    core.record("service.import", p.actor, vault=vault, details={"count": len(svcs)})
    return {"services": [public(x) for x in svcs]}
