"""Observability routes: Prometheus metrics, the vault request log, the audit log (SPEC §9, §12, §13).

* `GET /metrics` - Prometheus text 0.0.4. Public while the API listens on loopback; otherwise it needs an
  owner token or `AGENT_VAULT_METRICS_TOKEN` as bearer.
* `GET /v1/vaults/{v}/logs` - member+ on the vault: that vault's records, filtered and paged.
* `GET /v1/audit` - owner: every record of the instance (`logs export` pages through it).
* `POST /v1/audit/verify` - owner: flushes the audit writer, then verifies the whole chain.

Every handler that touches the DB is a plain `def` (FastAPI runs it in its threadpool, off the loop).
Records are returned as stored (plus their `hash`): they hold names, never values or tokens (SPEC §12).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from pydantic import Field

from agent_vault import crypto
from agent_vault.api.deps import MAX_ROW_ID, CoreDep, PrincipalDep, bearer_token
from agent_vault.audit import DECISIONS, latest_seq, list_records, verify_db
from agent_vault.core import Core
from agent_vault.domain.principal import Principal
from agent_vault.errors import AgentVaultError, InvalidRequest, NotFound, Unauthenticated
from agent_vault.hostpath import InvalidHost, normalize_host
from agent_vault.housekeeping import refresh_gauges
from agent_vault.schemas import Body

log = logging.getLogger("agent_vault.api")
router = APIRouter()
J = dict[str, Any]

METRICS_TOKEN_ENV = "AGENT_VAULT_METRICS_TOKEN"  # noqa: S105 (the variable name, not a token)
MAX_VAULT_LOGS = 500
MAX_AUDIT_RECORDS = 1000
FLUSH_TIMEOUT = 10.0


class AuditBusy(AgentVaultError):
    code = "audit_busy"
    status = 503
    hint = "Retry in a few seconds; the audit writer is behind."


class VerifyIn(Body):
    expect_head: str | None = Field(default=None, min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")


# -- /metrics ------------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _metrics_allowed(request: Request, core: Core) -> None:
    """SPEC §13: public on loopback; else the metrics token or an owner login token."""
    if _loopback(core.settings.host):
        return
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated(
            "metrics need a bearer token when the API is not on loopback",
            hint=f"Send an owner token or {METRICS_TOKEN_ENV} as bearer.",
        )
    expected = os.environ.get(METRICS_TOKEN_ENV, "")
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return
    p = core.runtime.principal(crypto.digest(token))
    if p is None:
        raise Unauthenticated("invalid, expired or revoked token")
    p.require_owner()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, core: CoreDep) -> Response:
    _metrics_allowed(request, core)
    m = core.services.metrics
    if m is None:
        raise NotFound("metrics are not enabled on this server")
    refresh_gauges(core, m, proposals=True)  # exact at scrape time; housekeeping keeps them fresh too
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)


# -- logs ----------------------------------------------------------------------------------------


def _parse_since(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        # Convert here: an offset that moves a date past year 1 or 9999 must be a 400, not a 500.
        return when if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest("since must be an ISO-8601 time such as 2026-01-31T12:00:00Z") from None


def _check_status(status: str | None) -> None:
    if status is None or status == "err":
        return
    if len(status) == 3 and (status.isdigit() or (status[0] in "12345" and status[1:] == "xx")):
        return
    raise InvalidRequest("status must look like 4xx, 404 or err")


def _require_member(core: Core, p: Principal, vault: str) -> None:
    p.require(vault, "member")
    if vault not in core.runtime.snapshot.vaults:
        raise NotFound(f"vault {vault} not found", hint="List vaults with 'agent-vault vault list'.")


@router.get("/v1/vaults/{v}/logs")
def vault_logs(
    v: str,
    core: CoreDep,
    p: PrincipalDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_ROW_ID)] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_VAULT_LOGS)] = 100,
    decision: str | None = None,
    status: str | None = None,
    service: str | None = None,
    agent: str | None = None,
    host: Annotated[str | None, Query(max_length=300)] = None,
    kind: str | None = None,
    since: str | None = None,
) -> J:
    """The vault's records (proxy requests and the vault's admin actions), ascending seq.

    Without `after`: the newest `limit` matches (before seq `before` if given); `next_cursor` is the
    oldest seq returned when older matches may exist (pass it as `before=`), else null.
    With `after`: the oldest `limit` matches after it; `next_cursor` is where to continue (pass it as
    `after=`; it skips non-matching records already scanned, so polling a filtered tail stays cheap).
    `latest_seq` is the newest seq of the whole log. Extensions: `kind` (e.g. `proxy.*`), `since` (ISO),
    `host` (exact target host, normalised as the proxy matches it: case, trailing dot, IDNA, IP forms).
    """
    _require_member(core, p, v)
    if decision is not None and decision not in DECISIONS:
        raise InvalidRequest("decision must be one of " + ", ".join(sorted(DECISIONS)))
    _check_status(status)
    when = _parse_since(since)
    try:
        target = normalize_host(host) if host is not None else None
    except InvalidHost:
        raise InvalidRequest("host is not a valid host name or IP address") from None
    engine = core.store.engine
    latest = latest_seq(engine)  # read first: every seq <= latest is committed before the scan below
    records = list_records(
        engine,
        vault=v,
        kind=kind,
        agent=agent,
        service=service,
        decision=decision,
        status_class=status,
        host=target,
        since=when,
        after_seq=after,
        before_seq=before,
        limit=limit,
    )
    full = len(records) == limit
    cursor: int | None
    if after is not None:
        last = int(records[-1]["seq"]) if records else after
        cursor = last if full else max(last, latest)
    else:
        cursor = int(records[0]["seq"]) if full and records else None
    return {"logs": records, "next_cursor": cursor, "latest_seq": latest}


@router.get("/v1/audit")
def audit_records(
    core: CoreDep,
    p: PrincipalDep,
    after_seq: Annotated[int | None, Query(ge=0, le=MAX_ROW_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_RECORDS)] = 100,
    kind: str | None = None,
    vault: str | None = None,
    since: str | None = None,
) -> J:
    """Owner: records of the whole instance, ascending seq, each with its hash. With `after_seq` the
    oldest `limit` after it (export pages with it from 0), else the newest `limit`. `kind` accepts a
    family (`credential.*`); `vault` and `since` (ISO) are extensions."""
    p.require_owner()
    records = list_records(
        core.store.engine, kind=kind, vault=vault, since=_parse_since(since), after_seq=after_seq, limit=limit
    )
    return {"records": records}


@router.post("/v1/audit/verify")
def audit_verify(core: CoreDep, p: PrincipalDep, body: VerifyIn | None = None) -> J:
    """Owner: flush the writer (so every acknowledged record is covered), then verify the whole chain
    against `audit.head` and `expect_head`. `first_bad_seq` and `reason` are present only when not ok."""
    p.require_owner()
    try:
        core.audit.flush(FLUSH_TIMEOUT)
    except TimeoutError:
        raise AuditBusy("the audit writer did not catch up in time") from None
    except RuntimeError:
        log.warning("audit verify: the writer is not running; verifying what is stored")
    result = verify_db(core.store.engine, core.home.audit_head, body.expect_head if body else None)
    out: J = {"ok": result.ok, "checked": result.checked, "head": result.head}
    if not result.ok:
        out["first_bad_seq"] = result.first_bad_seq
        out["reason"] = result.reason
    return out
