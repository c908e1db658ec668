"""Proposals lifecycle: agents ask, humans approve or reject (SPEC §8, §11).

States: pending -> applied | rejected | expired; terminal states never change. Ids are per-vault
sequence numbers (`Vault.next_proposal_seq`), never reused. Danger: approval carries credential
values in clear; they go straight into `changeset.apply` and never into messages, audit details,
stored proposal JSON or return values. The approval link (`av_appr_…`, stored only as a digest,
24 h, dropped once the proposal leaves `pending`) lets a browser *show* a proposal; approving always
needs a logged-in human with the §3.3 role and the step-up password.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from agent_vault import crypto
from agent_vault.core import Core
from agent_vault.domain import changeset as cs
from agent_vault.domain.common import get_vault, iso, step_up
from agent_vault.domain.principal import ROLE_RANK, Principal
from agent_vault.errors import (
    Conflict,
    InvalidRequest,
    MissingValue,
    NotFound,
    TooManyPending,
    Unauthenticated,
)
from agent_vault.models import Proposal, Vault, utcnow

PENDING_TTL = timedelta(days=7)
APPROVAL_TTL = timedelta(hours=24)
MAX_PENDING = 20
MAX_TEXT = 2000
STATUSES = ("pending", "applied", "rejected", "expired", "draft")  # draft: learn mode (domain.learn)
OPEN = ("pending", "draft")  # may still be approved or rejected
J = dict[str, Any]


def _owner(actor: str) -> str:
    """The identity behind an actor label: a session (`session:<id>:<creator>`) acts for its creator."""
    if actor.startswith("session:") and actor.count(":") >= 2:
        return actor.split(":", 2)[2]
    return actor


def _sees_all(p: Principal, vault: str) -> bool:
    return ROLE_RANK.get(p.role_on(vault) or "", -1) >= ROLE_RANK["member"]


def _not_found(seq: int, vault: str) -> NotFound:
    return NotFound(
        f"proposal {seq} not found in vault {vault}", hint="List them with 'agent-vault vault proposal list'."
    )


def _not_pending(seq: int, status: str) -> Conflict:
    return Conflict(
        f"proposal {seq} is {status}, not pending",
        hint="Only a pending proposal can be decided; see 'agent-vault vault proposal show'.",
    )


def _row(s: Session, v: Vault, seq: int) -> Proposal:
    pr = s.exec(select(Proposal).where(Proposal.vault_id == v.id, Proposal.seq == seq)).first()
    if pr is None:
        raise _not_found(seq, v.name)
    return pr


def _changes(pr: Proposal) -> cs.ChangeSet:
    return cs.load(pr.services, pr.credentials, pr.message)


def _out_of_date(ch: cs.ChangeSet, st: cs.State) -> dict[str, str]:
    """The items of a change set the vault has overtaken since it was filed (a service or credential
    it deletes was deleted directly), by `service:NAME` / `credential:KEY`, each with a reason."""
    gone = {f"service:{n}": f"service {n} no longer exists" for n in ch.deletes if n not in st.services}
    gone |= {
        f"credential:{k}": f"credential {k} no longer exists" for k in ch.cred_deletes if k not in st.creds
    }
    return gone


def _stale(seq: int, vault: str, gone: dict[str, str]) -> Conflict:
    return Conflict(
        f"proposal {seq} is out of date: {'; '.join(gone.values())}",
        hint=f"Reject it ('agent-vault vault proposal reject {seq} --vault {vault}'); the agent can "
        "propose again against the vault as it is now.",
    )


def expire_due(core: Core, now: datetime | None = None) -> int:
    """Mark pending proposals past their 7-day life as expired; returns how many.

    Called lazily before every proposal read/write, and meant for the server's periodic sweep.
    """
    now = now or utcnow()
    due = (Proposal.status == "pending") & (Proposal.expires_at <= now)
    with core.store.read() as s:
        if s.exec(select(Proposal.id).where(due)).first() is None:
            return 0
    done: list[tuple[str, int]] = []
    with core.store.write() as s:
        for pr, vname in s.exec(select(Proposal, Vault.name).join(Vault).where(due)):
            pr.status, pr.approval_digest, pr.reviewed_at = "expired", None, now
            s.add(pr)
            done.append((vname, pr.seq))
    for vname, seq in done:
        core.record("proposal.expire", "server", vault=vname, target=str(seq))
    return len(done)


def parse(data: Any) -> cs.ChangeSet:
    """Validate a proposal body on its own (SPEC §8): the shape, limits and names, not the vault."""
    return cs.parse(data)


def create(core: Core, p: Principal, vault: str, data: Any) -> J:
    """File a proposal (any grant on the vault). The approval token appears only in this answer.

    `data` is the request body or a change set from `parse`."""
    p.require(vault, "proxy")
    changes = data if isinstance(data, cs.ChangeSet) else cs.parse(data)
    expire_due(core)
    token = crypto.mint_token("av_appr_")
    now = utcnow()
    with core.store.write() as s:
        v = get_vault(s, vault)
        assert v.id is not None
        cs.check_refs(changes, cs.vault_state(s, v))
        pending = s.exec(select(Proposal.id).where(Proposal.vault_id == v.id, Proposal.status == "pending"))
        if len(list(pending)) >= MAX_PENDING:
            raise TooManyPending(f"vault {vault} already has {MAX_PENDING} pending proposals")
        seq = v.next_proposal_seq
        v.next_proposal_seq = seq + 1
        s.add(v)
        s.add(
            Proposal(
                vault_id=v.id,
                seq=seq,
                actor=p.actor,
                message=changes.message,
                services=changes.services_json(),
                credentials=changes.credentials_json(),
                approval_digest=crypto.digest(token),
                approval_expires_at=now + APPROVAL_TTL,
                created_at=now,
                expires_at=now + PENDING_TTL,
            )
        )
    core.record("proposal.create", p.actor, vault=vault, target=str(seq), details=changes.summary())
    core.notify("proposal.created", vault, {"id": seq, "actor": p.actor, **changes.summary()})
    who = "an admin" if changes.needed_role == "admin" else "a member"
    return {
        "id": seq,
        "status": "pending",
        "vault": vault,
        "approval_url": f"{core.public_url}/ui/approve/{vault}/{seq}?token={token}",
        "message": f"Proposal {seq} created; {who} of vault {vault} must approve it.",
    }


def _view(pr: Proposal, vault: str, st: cs.State | None = None) -> J:
    """The proposal as filed, with `out_of_date`: for an open one checked against the vault's state
    `st`, the reasons approving it would now fail with 409 (empty: it still applies)."""
    out = {
        "id": pr.seq,
        "status": pr.status,
        "vault": vault,
        "services": json.loads(pr.services),
        "credentials": json.loads(pr.credentials),
        "message": pr.message,
        "review_note": pr.review_note,
        "created_at": iso(pr.created_at),
        "reviewed_at": iso(pr.reviewed_at),
        "expires_at": iso(pr.expires_at),
    }
    gone = _out_of_date(_changes(pr), st) if st is not None and pr.status in OPEN else {}
    out["out_of_date"] = list(gone.values())
    return out


def _rows(core: Core, vault: str, status: str | None) -> list[Proposal]:
    if status is not None and status not in STATUSES:
        raise InvalidRequest("status must be pending, applied, rejected, expired or draft")
    expire_due(core)
    with core.store.read() as s:
        v = get_vault(s, vault)
        q = select(Proposal).where(Proposal.vault_id == v.id)
        if status:
            q = q.where(Proposal.status == status)
        return sorted(s.exec(q), key=lambda r: r.seq)


def list_own(core: Core, p: Principal, vault: str, status: str | None = None) -> J:
    """Agent-facing list: the caller's own proposals at proxy role, the whole vault at member+."""
    p.require(vault, "proxy")
    rows = _rows(core, vault, status)
    if not _sees_all(p, vault):
        rows = [r for r in rows if _owner(r.actor) == _owner(p.actor)]
    return {
        "proposals": [
            {"id": r.seq, "status": r.status, "message": r.message, "created_at": iso(r.created_at)}
            for r in rows
        ]
    }


def get_own(core: Core, p: Principal, vault: str, seq: int) -> J:
    """Agent-facing view; another actor's proposal is 404 at proxy role."""
    p.require(vault, "proxy")
    expire_due(core)
    with core.store.read() as s:
        v = get_vault(s, vault)
        pr = _row(s, v, seq)
        if not _sees_all(p, vault) and _owner(pr.actor) != _owner(p.actor):
            raise _not_found(seq, vault)
        st = cs.vault_state(s, v) if pr.status in OPEN else None
    return _view(pr, vault, st)


def list_all(core: Core, p: Principal, vault: str, status: str | None = None) -> J:
    """Admin list (member+), oldest first; entries name services and keys (a `-` prefix = delete)."""
    p.require(vault, "member")
    out = []
    for r in _rows(core, vault, status):
        ch = _changes(r)
        out.append(
            {
                "id": r.seq,
                "status": r.status,
                "actor": r.actor,
                "message": r.message,
                "services": [s.name for s in ch.sets] + [f"-{n}" for n in ch.deletes],
                "credentials": [c.key if c.action == "set" else f"-{c.key}" for c in ch.creds],
                "required_role": ch.needed_role,
                "created_at": iso(r.created_at),
                "expires_at": iso(r.expires_at),
                "reviewed_at": iso(r.reviewed_at),
            }
        )
    return {"proposals": out}


def _token_ok(pr: Proposal, token: str) -> bool:
    if pr.status != "pending" or pr.approval_digest is None or pr.approval_expires_at is None:
        return False
    if pr.approval_expires_at <= utcnow():
        return False
    return crypto.same_digest(crypto.digest(token), pr.approval_digest)


def get_full(core: Core, p: Principal | None, vault: str, seq: int, token: str | None = None) -> J:
    """Full proposal with `missing_values` and `changes`: for members, or with a live approval link."""
    if p is not None and _sees_all(p, vault):
        token = None
    elif not token:
        if p is None:
            raise Unauthenticated("missing bearer token")
        p.require(vault, "member")
    expire_due(core)
    with core.store.read() as s:
        v = s.exec(select(Vault).where(Vault.name == vault)).first()
        pr = None
        if v is not None:
            pr = s.exec(select(Proposal).where(Proposal.vault_id == v.id, Proposal.seq == seq)).first()
        if token and (pr is None or not _token_ok(pr, token)):
            raise Unauthenticated(
                "this approval link is invalid, used or expired",
                hint="Log in as a member of the vault to review the proposal.",
            )
        if v is None or pr is None:
            raise _not_found(seq, vault)
        ch = _changes(pr)
        st = cs.vault_state(s, v)
    out = _view(pr, vault, st)
    changes = cs.describe(ch, st)
    if pr.status in OPEN:  # mark each overtaken item where it is listed
        gone = _out_of_date(ch, st)
        for kind, key in (("services", "name"), ("credentials", "key")):
            for c in changes[kind]:
                reason = gone.get(f"{kind[:-1]}:{c[key]}")
                if reason and c["effect"] == "delete":
                    c["out_of_date"] = reason
    out.update(
        {
            "actor": pr.actor,
            "reviewed_by": pr.reviewed_by,
            "required_role": ch.needed_role,
            "approval_expires_at": iso(pr.approval_expires_at),
            "missing_values": cs.missing(ch, st) if pr.status == "pending" else [],
            "changes": changes,
        }
    )
    return out


def approve(
    core: Core,
    p: Principal,
    vault: str,
    seq: int,
    password: str | None,
    values: dict[str, str],
    note: str | None = None,
) -> J:
    """Apply a pending proposal in ONE transaction, then rebuild the matching index.

    Needs a human with admin (services change) or member (credentials only), and step-up.
    """
    p.require(vault, "member", human=True)
    expire_due(core)
    with core.store.read() as s:
        v = get_vault(s, vault)
        pr = _row(s, v, seq)
        gone = _out_of_date(_changes(pr), cs.vault_state(s, v))
    p.require(vault, _changes(pr).needed_role, human=True)
    if pr.status not in OPEN:
        raise _not_pending(seq, pr.status)
    if gone:
        raise _stale(seq, vault, gone)
    cs.check_values(values)
    if note is not None and len(note) > MAX_TEXT:
        raise InvalidRequest(f"the note is longer than {MAX_TEXT} characters")
    step_up(core, p, password)
    with core.store.write() as s:
        v = get_vault(s, vault)
        pr = _row(s, v, seq)
        if pr.status not in OPEN:
            raise _not_pending(seq, pr.status)
        ch = _changes(pr)
        st = cs.vault_state(s, v)
        gone = _out_of_date(ch, st)
        if gone:
            raise _stale(seq, vault, gone)
        cs.check_refs(ch, st)
        extra = sorted(set(values) - ch.value_keys())
        if extra:
            raise InvalidRequest(f"proposal {seq} does not use credentials: {', '.join(extra)}")
        missing = [k for k in cs.missing(ch, st) if k not in values]
        if missing:
            raise MissingValue(f"values missing for: {', '.join(missing)}", keys=missing)
        cs.apply(s, v, ch, st, values, core.dek, p.actor)
        pr.status, pr.reviewed_by, pr.reviewed_at = "applied", p.actor, utcnow()
        pr.review_note, pr.approval_digest = note or None, None
        s.add(pr)
    core.runtime.reload()
    details = {**ch.summary(), "values_set": sorted(values)}
    core.record("proposal.approve", p.actor, vault=vault, target=str(seq), details=details)
    return {"id": seq, "status": "applied"}


def reject(core: Core, p: Principal, vault: str, seq: int, reason: str | None = None) -> J:
    """Any member human may reject; the reason becomes `review_note`, shown to the agent."""
    p.require(vault, "member", human=True)
    if reason is not None and len(reason) > MAX_TEXT:
        raise InvalidRequest(f"the reason is longer than {MAX_TEXT} characters")
    expire_due(core)
    with core.store.write() as s:
        pr = _row(s, get_vault(s, vault), seq)
        if pr.status not in OPEN:
            raise _not_pending(seq, pr.status)
        pr.status, pr.reviewed_by, pr.reviewed_at = "rejected", p.actor, utcnow()
        pr.review_note, pr.approval_digest = reason or None, None
        s.add(pr)
    core.record("proposal.reject", p.actor, vault=vault, target=str(seq))
    return {"id": seq, "status": "rejected"}
