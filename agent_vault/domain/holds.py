"""Human decisions on approval holds (issue 19), on top of the process's `HoldManager`.

Roles (SPEC §3.3 rules applied to holds): listing a vault's holds needs `member`; an agent or session
sees only its own (`list_own`). Deciding is for humans only: deny needs `member`; approve needs
`member` for `once`/`1h` and `admin` for `always` (it changes the service, like a service write), and
every approval needs the step-up password (§3.4): an agent running as the same OS user can read the
human's CLI login, and must not approve its own held requests with it. `always` records the agent in
the service's `approval.exempt` list (audited as `service.update`), so the flag is off for that
agent + service from the next request on.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import select

from agent_vault.core import Core
from agent_vault.domain.common import get_vault, step_up
from agent_vault.domain.principal import Principal
from agent_vault.errors import InvalidRequest, NotFound
from agent_vault.holds import HoldManager
from agent_vault.models import Service
from agent_vault.servicedef import ServiceDef

SCOPES = ("once", "1h", "always")


def _manager(core: Core) -> HoldManager:
    holds = core.services.holds
    if holds is None:
        raise NotFound("this server holds no requests (its proxy is off)")
    return holds


def count(core: Core, vault: str) -> int:
    holds = core.services.holds
    return 0 if holds is None else holds.count(vault)


def list_vault(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    p.require(vault, "member")
    holds = core.services.holds
    return {"holds": [] if holds is None else holds.list(vault)}


def list_own(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    """The caller's own pending holds (an agent and its sessions share them)."""
    p.require(vault, "proxy")
    holds = core.services.holds
    return {"holds": [] if holds is None else holds.list(vault, agent=p.owner)}


def approve(
    core: Core, p: Principal, vault: str, hold_id: str, scope: str, password: str | None
) -> dict[str, Any]:
    if scope not in SCOPES:
        raise InvalidRequest("scope must be once, 1h or always")
    p.require(vault, "admin" if scope == "always" else "member", human=True)
    step_up(core, p, password)
    mgr = _manager(core)
    hold = mgr.get(vault, hold_id)
    if scope == "always":
        _exempt(core, p, vault, hold.service, hold.agent)
    return mgr.decide(vault, hold_id, approve=True, scope=scope, by=p.actor)


def deny(core: Core, p: Principal, vault: str, hold_id: str) -> dict[str, Any]:
    p.require(vault, "member", human=True)
    return _manager(core).decide(vault, hold_id, approve=False, scope="", by=p.actor)


def _exempt(core: Core, p: Principal, vault: str, service: str, agent: str) -> None:
    """Turn the flag off for `agent` on `service`: a recorded service change."""
    with core.store.write() as s:
        v = get_vault(s, vault)
        row = s.exec(select(Service).where(Service.vault_id == v.id, Service.name == service)).first()
        if row is None:
            raise NotFound(
                f"service {service} not found in vault {vault}",
                hint="List them with 'agent-vault vault service list'.",
            )
        d = json.loads(row.definition)
        approval = dict(d.get("approval") or {})
        approval["exempt"] = [*approval.get("exempt", []), agent]
        d["approval"] = approval
        svc = ServiceDef.model_validate(d)
        row.definition = json.dumps(svc.model_dump(mode="json", by_alias=True), sort_keys=True)
        s.add(row)
    core.runtime.reload()
    core.record("service.update", p.actor, vault=vault, target=service, details={"approval_exempt": agent})
