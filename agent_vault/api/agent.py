"""Agent-facing and public routes: discover, CA, status, health, ready (SPEC §8, §13)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from agent_vault import __version__
from agent_vault.api.deps import CoreDep, PrincipalDep, select_vault
from agent_vault.domain.principal import Principal
from agent_vault.domain.services import public
from agent_vault.errors import NotFound, ProxyDisabled
from agent_vault.quota import parse_quota
from agent_vault.servicedef import SUPPORTED_AUTH_TYPES, ServiceDef
from agent_vault.snapshot import effective_policy
from agent_vault.usage import parse_budget

router = APIRouter()
J = dict[str, Any]


def guard_fields(core: Any, vault: str, svc: ServiceDef, p: Principal | None) -> J:
    """A service's quota and token budget (issue #20), and what was used of them in this window."""
    out: J = {}
    if svc.quota is not None:
        out["quota"] = svc.quota
        if p is not None:
            key = (vault, svc.name, f"{p.kind}:{p.token_id}")
            out["quota_used"] = core.services.quotas.used(key, parse_quota(svc.quota))
    if svc.token_budget is not None:
        b = parse_budget(svc.token_budget)
        out["token_budget"] = svc.token_budget
        out["tokens_used"] = core.services.usage.used(vault, svc.name, b)
        if p is not None:
            out["tokens_used_by_you"] = core.services.usage.used(vault, svc.name, b, agent=p.name)
    return out


def discover_body(core: Any, vault: str, role: str, principal: Principal | None = None) -> J:
    view = core.runtime.snapshot.vaults.get(vault)
    if view is None:
        raise NotFound(f"vault {vault} not found", hint="List vaults with 'agent-vault vault list'.")
    svcs = []
    for svc in view.services:
        d = public(svc)
        svcs.append(
            {
                "name": d["name"],
                "host": d["host"],
                "port": d["port"],
                "path": d["path"],
                "methods": d["methods"],
                "auth_type": svc.auth.type,
                "enabled": svc.enabled,
                "placeholders": list(svc.substitution_keys),
                "schemes": ["https", "http"] if svc.allow_http else ["https"],
                "approval_methods": None if svc.approval is None else (svc.approval.methods or ["*"]),
                **guard_fields(core, vault, svc, principal),
            }
        )
        if svc.auth.type == "aws-sigv4":  # what the agent's SDK needs (it signs with placeholder keys)
            svcs[-1]["aws"] = {
                "region": getattr(svc.auth, "region", None),
                "service": getattr(svc.auth, "service", None),
            }
    base = core.public_url
    return {
        "vault": vault,
        "role": role,
        "services": svcs,
        "available_credentials": view.key_names(),
        # what the proxy does for this principal (a session's stricter override, narrowed: deny)
        "unmatched_policy": view.unmatched_policy if principal is None else effective_policy(view, principal),
        "enforcement": view.enforcement,
        "proposals_url": f"{base}/v1/proposals",
        "ca_url": f"{base}/v1/mitm/ca.pem",
        "placeholder_syntax": "{{KEY}}",
        "supported_auth_types": SUPPORTED_AUTH_TYPES,
    }


@router.get("/v1/discover")
@router.get("/discover", include_in_schema=False)
def discover(request: Request, core: CoreDep, p: PrincipalDep) -> J:
    vault = select_vault(core, p, request.headers.get("x-vault"))
    role = p.role_on(vault) or "proxy"
    body = discover_body(core, vault, role, p)
    if p.narrowed:  # issue 19: a narrowed session sees only what it may use
        only = p.only_services
        body["services"] = [s for s in body["services"] if only is None or s["name"] in only]
        body["narrowed"] = {"services": p.only_services, "methods": p.only_methods}
    return body


@router.get("/v1/mitm/ca.pem")
def ca_pem(core: CoreDep) -> Response:
    if core.settings.disable_proxy or core.proxy_port is None:
        raise ProxyDisabled("the proxy listener is disabled on this server")
    return Response(
        core.ca.cert_pem, media_type="application/x-pem-file", headers={"X-MITM-Port": str(core.proxy_port)}
    )


@router.get("/v1/status")
def status(request: Request) -> J:
    core = getattr(request.app.state, "core", None)
    if core is None:
        return {
            "initialized": True,
            "version": __version__,
            "key_mode": None,
            "proxy_port": None,
            "public_url": None,
            "locked": True,
        }
    return {
        "initialized": True,
        "version": __version__,
        "key_mode": core.key_mode,
        "proxy_port": core.proxy_port,
        "public_url": core.public_url,
        "instance_id": core.instance_id,
    }


@router.get("/health")
def health() -> J:
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request) -> Response:
    core = getattr(request.app.state, "core", None)
    parts: J = {"status": "ready", "proxy": False, "db": False, "audit_queue": 0}
    if core is not None:
        parts["proxy"] = core.proxy_ready or core.settings.disable_proxy
        try:
            with core.store.read() as s:
                s.connection().exec_driver_sql("SELECT 1")
            parts["db"] = True
        except Exception:  # readiness reports the failure instead of raising
            parts["db"] = False
        parts["audit_queue"] = core.audit.depth
        fresh = core.services.freshness
        if fresh is not None:  # a replica on PostgreSQL: is its snapshot confirmed current?
            problem = fresh.problem() or (None if parts["db"] else "store unreachable")
            parts["snapshot_age_s"] = round(fresh.age(), 1)
            if problem is not None:
                parts["status"], parts["reason"] = "degraded", problem
    ok = core is not None and parts["proxy"] and parts["db"] and parts["status"] == "ready"
    if not ok and parts["status"] == "ready":
        parts["status"] = "not_ready"
    return JSONResponse(parts, status_code=200 if ok else 503)
