"""Vaults, their settings and grants (SPEC §3.3, §9)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import func, select

from agent_vault.audit import proxy_counts
from agent_vault.core import Core
from agent_vault.domain import agents, holds
from agent_vault.domain.common import get_vault, iso, step_up
from agent_vault.domain.names import check_email, check_vault_name
from agent_vault.domain.principal import ROLE_RANK, Principal
from agent_vault.errors import Conflict, InvalidRequest, NotFound
from agent_vault.models import Agent, Credential, Grant, Proposal, Service, User, Vault, utcnow

POLICIES = ("tunnel", "passthrough", "deny")
RATE_LIMIT_PROFILES = ("default", "strict", "off", "server")
ENFORCEMENTS = ("enforce", "dry-run", "learn")


def visible_vaults(core: Core, p: Principal) -> list[str]:
    names = sorted(core.runtime.snapshot.vaults)
    return [n for n in names if p.role_on(n) is not None]


def list_vaults(core: Core, p: Principal) -> dict[str, Any]:
    with core.store.read() as s:
        rows = {v.name: v for v in s.exec(select(Vault))}
        pending: dict[int, int] = {}
        for pr in s.exec(select(Proposal).where(Proposal.status == "pending")):
            pending[pr.vault_id] = pending.get(pr.vault_id, 0) + 1
    out = []
    for name in visible_vaults(core, p):
        v = rows.get(name)
        if v is None:
            continue
        assert v.id is not None
        out.append(
            {
                "name": v.name,
                "role": p.role_on(name),
                "created_at": iso(v.created_at),
                "pending_proposals": pending.get(v.id, 0),
                "pending_holds": holds.count(core, v.name),
                "unmatched_policy": v.unmatched_policy,
                "enforcement": v.enforcement,
            }
        )
    return {"vaults": out}


def create_vault(core: Core, p: Principal, name: str) -> dict[str, Any]:
    p.require_user()
    check_vault_name(name)
    with core.store.write() as s:
        if s.exec(select(Vault).where(Vault.name == name)).first():
            raise Conflict(f"vault {name} already exists")
        v = Vault(name=name)
        s.add(v)
        s.flush()
        assert v.id is not None and p.user_id is not None
        s.add(Grant(vault_id=v.id, subject_kind="user", subject_id=p.user_id, role="admin"))
    core.runtime.reload()
    core.record("vault.create", p.actor, vault=name)
    return {
        "name": name,
        "role": "admin",
        "created_at": iso(v.created_at),
        "unmatched_policy": v.unmatched_policy,
    }


def get_vault_info(core: Core, p: Principal, name: str) -> dict[str, Any]:
    """Settings and counts. The `*_last_hour` counts (proxied requests, denials, errors: decision
    `error` or status >= 500) come from the committed audit records, so they lag by one writer batch;
    they summarise the request log, so only its readers (member+) get them."""
    p.require(name, "proxy")
    with core.store.read() as s:
        v = get_vault(s, name)
        n_svc = len(list(s.exec(select(Service.id).where(Service.vault_id == v.id))))
        n_cred = len(list(s.exec(select(Credential.id).where(Credential.vault_id == v.id))))
        pending = s.exec(
            select(func.count()).where(Proposal.vault_id == v.id, Proposal.status == "pending")
        ).one()
    counts = {"services": n_svc, "credentials": n_cred, "pending_proposals": int(pending)}
    if ROLE_RANK[p.role_on(name) or "proxy"] >= ROLE_RANK["member"]:
        recent = proxy_counts(core.store.engine, v.name, utcnow() - timedelta(hours=1))
        counts |= {f"{k}_last_hour": n for k, n in recent.items()}
    return {
        "name": v.name,
        "settings": {
            "unmatched_policy": v.unmatched_policy,
            "enforcement": v.enforcement,
            "rate_limits": v.rate_limits or "server",
        },
        "counts": counts,
    }


def update_vault(
    core: Core,
    p: Principal,
    name: str,
    password: str | None,
    *,
    new_name: str | None = None,
    unmatched_policy: str | None = None,
    enforcement: str | None = None,
    rate_limits: str | None = None,
) -> dict[str, Any]:
    p.require(name, "admin", human=True)
    step_up(core, p, password)
    if unmatched_policy is not None and unmatched_policy not in POLICIES:
        raise InvalidRequest("unmatched_policy must be tunnel, passthrough or deny")
    if enforcement is not None and enforcement not in ENFORCEMENTS:
        raise InvalidRequest("enforcement must be enforce, dry-run or learn")
    if rate_limits is not None and rate_limits not in RATE_LIMIT_PROFILES:
        raise InvalidRequest("rate_limits must be default, strict, off or server")
    with core.store.write() as s:
        v = get_vault(s, name)
        if new_name and new_name != name:
            check_vault_name(new_name)
            if name == "default":
                raise Conflict("vault default cannot be renamed")
            if s.exec(select(Vault).where(Vault.name == new_name)).first():
                raise Conflict(f"vault {new_name} already exists")
            v.name = new_name
        if unmatched_policy:
            v.unmatched_policy = unmatched_policy
        if enforcement:
            v.enforcement = enforcement
        if rate_limits:
            v.rate_limits = None if rate_limits == "server" else rate_limits
        s.add(v)
    core.runtime.reload()
    core.record(
        "vault.settings",
        p.actor,
        vault=v.name,
        details={
            "unmatched_policy": v.unmatched_policy,
            "enforcement": v.enforcement,
            "rate_limits": v.rate_limits or "server",
            "renamed_from": name if v.name != name else None,
        },
    )
    return get_vault_info(core, p, v.name)


def delete_vault(core: Core, p: Principal, name: str, password: str | None) -> None:
    p.require(name, "admin", human=True)
    step_up(core, p, password)
    if name == "default":
        raise Conflict(
            "vault default cannot be deleted",
            hint="Every instance keeps it; remove what it holds instead ('vault service remove', ...).",
        )
    with core.store.write() as s:
        v = get_vault(s, name)
        for row in [
            *s.exec(select(Grant).where(Grant.vault_id == v.id)),
            *s.exec(select(Credential).where(Credential.vault_id == v.id)),
            *s.exec(select(Service).where(Service.vault_id == v.id)),
            *s.exec(select(Proposal).where(Proposal.vault_id == v.id)),
        ]:
            s.delete(row)
        s.flush()  # children first: the FK cascade must not empty them under the ORM's feet
        s.delete(v)
    core.runtime.reload()
    core.record("vault.delete", p.actor, vault=name)


def list_grants(core: Core, p: Principal, vault: str, kind: str) -> list[dict[str, Any]]:
    p.require(vault, "admin", human=kind == "user")
    with core.store.read() as s:
        v = get_vault(s, vault)
        grants = list(s.exec(select(Grant).where(Grant.vault_id == v.id, Grant.subject_kind == kind)))
        out = []
        for g in grants:
            agent = s.get(Agent, g.subject_id) if kind == "agent" else None
            user = s.get(User, g.subject_id) if kind == "user" else None
            label = agent.name if agent else user.email if user else None
            if label is None:
                continue
            out.append({"name" if kind == "agent" else "email": label, "role": g.role})
    return out


def set_grant(
    core: Core, p: Principal, vault: str, password: str | None, kind: str, subject: str, role: str
) -> dict[str, Any]:
    p.require(vault, "admin", human=True)
    step_up(core, p, password)
    if role not in ("proxy", "member", "admin"):
        raise InvalidRequest("role must be proxy, member or admin")
    if kind == "agent" and role == "admin":
        raise InvalidRequest("agents cannot be granted admin", hint="Use proxy or member.")
    with core.store.write() as s:
        v, subj_id, g = _grant(s, vault, kind, subject)
        assert v.id is not None
        if kind == "agent":  # SPEC §3.3: admin of every vault the agent is (or would be) granted on
            agent = s.get(Agent, subj_id)
            assert agent is not None  # `_grant` found it by name in this transaction
            agents.require_manager(p, sorted({vault, *agents.vault_names(s, agent)}))
        g = g or Grant(vault_id=v.id, subject_kind=kind, subject_id=subj_id, role=role)
        g.role = role
        s.add(g)
    core.runtime.reload()
    core.record(
        "agent.grant" if kind == "agent" else "user.role",
        p.actor,
        vault=vault,
        target=subject,
        details={"role": role},
    )
    return {"name" if kind == "agent" else "email": subject, "role": role}


def remove_grant(core: Core, p: Principal, vault: str, password: str | None, kind: str, subject: str) -> None:
    p.require(vault, "admin", human=True)
    step_up(core, p, password)
    with core.store.write() as s:
        _v, _id, g = _grant(s, vault, kind, subject)
        if g is None:
            raise NotFound(f"{subject} has no grant on vault {vault}")
        s.delete(g)
    core.runtime.reload()
    core.record(
        "agent.grant" if kind == "agent" else "user.role",
        p.actor,
        vault=vault,
        target=subject,
        details={"role": None},
    )


def _grant(s: Any, vault: str, kind: str, subject: str) -> tuple[Vault, int, Grant | None]:
    """(vault row, subject id, existing grant or None) for a user email or agent name."""
    v = get_vault(s, vault)
    subj_id = _subject_id(s, kind, subject)
    g = s.exec(
        select(Grant).where(Grant.vault_id == v.id, Grant.subject_kind == kind, Grant.subject_id == subj_id)
    ).first()
    return v, subj_id, g


def _subject_id(s: Any, kind: str, subject: str) -> int:
    if kind == "agent":
        a = s.exec(select(Agent).where(Agent.name == subject)).first()
        if a is None:
            raise NotFound(f"agent {subject} not found", hint="List agents with 'agent-vault agent list'.")
        return int(a.id)
    u = s.exec(select(User).where(User.email == check_email(subject))).first()
    if u is None:
        raise NotFound(f"user {subject} not found", hint="List users with 'agent-vault user list'.")
    return int(u.id)
