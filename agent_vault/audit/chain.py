"""The audit hash chain and the record builders (SPEC §12), pure: no DB, no I/O.

Every stored record is a JSON object that carries its own position: `seq` (1, 2, 3, … without gaps) and
`prev_hash` (the previous record's hash; `GENESIS` for seq 1, or the last pruned record's hash after a
retention prune). Its text in the DB is `canonical(record)`, and

    hash = sha256_hex(prev_hash + canonical)

Because `seq` and `prev_hash` are inside the hashed text, a record cannot be moved, and a deletion shows
as a broken link even where no seq gap is left.

`verify_chain` reports the FIRST bad record, checking each row in this order:

* `edited`    - the text is not a JSON object with int `seq` and str `prev_hash`, or its hash does not
                match the stored hash;
* `reordered` - an intact record sits at another seq than its own, or rows come out of seq order;
* `edited`    - an indexed column (ts, kind, actor, …) disagrees with the record;
* `deleted`   - a seq gap, a `prev_hash` that is not the previous record's hash, or a chain starting
                after seq 1 with no later `audit.prune` record naming exactly that start;
* `truncated` - (after the whole chain checked out) the tail is shorter than `audit.head` says, the record
                at the head's seq has another hash, or `expect_head` is not the hash of any record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from agent_vault.audit.clean import UNENCODABLE as UNENCODABLE  # re-exported: the record API
from agent_vault.audit.clean import clean_record as clean_record
from agent_vault.audit.clean import clean_text as clean_text
from agent_vault.audit.clean import unencodable_record as unencodable_record
from agent_vault.audit.clean import utc_ts as utc_ts

GENESIS = "0" * 64
PRUNE_KIND = "audit.prune"
GAP_KIND = "audit.gap"
SUMMARY_KIND = "proxy.refused"  # anonymous refusals, summarised per window and cause

Reason = Literal["edited", "deleted", "reordered", "truncated"]

# Indexed columns of `audit_events` that mirror record fields (filters use them; verify cross-checks them).
INDEX_FIELDS = ("ts", "kind", "actor", "vault", "decision", "host", "status")
IndexColumns = tuple[str, str, str, str | None, str | None, str | None, int | None]

# (seq, record_json, stored_hash) or the same plus the row's IndexColumns.
Row = tuple[int, str, str] | tuple[int, str, str, IndexColumns]


def canonical(record: Mapping[str, Any]) -> str:
    """Canonical JSON of `record` without its "hash": keys sorted, no whitespace, UTF-8 text.

    Raises TypeError/ValueError for values JSON cannot represent exactly (objects, NaN, infinity).
    """
    body = record  # no copy when there is nothing to leave out (the writer's case: ~3 us of ~12 per record)
    if "hash" in record or type(record) is not dict:
        body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def link_hash(prev_hash: str, canonical_json: str) -> str:
    """sha256_hex(prev_hash + canonical_json): the hash of one link."""
    return hashlib.sha256((prev_hash + canonical_json).encode()).hexdigest()


def index_columns(record: Mapping[str, Any]) -> IndexColumns:
    """The indexed column values for `record` (what the writer stores beside the JSON)."""

    def opt(name: str) -> str | None:
        value = record.get(name)
        return value if isinstance(value, str) else None

    status = record.get("status")
    return (
        str(record.get("ts", "")),
        str(record.get("kind", "")),
        str(record.get("actor") or ""),
        opt("vault"),
        opt("decision"),
        opt("host"),
        status if isinstance(status, int) and not isinstance(status, bool) else None,
    )


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification. `checked` counts records verified before the first bad one (all of
    them when ok); `head` is the hash of the last good record (`GENESIS` for an empty chain)."""

    ok: bool
    checked: int
    head: str
    first_bad_seq: int | None = None
    reason: Reason | None = None


def _parse(text: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(text)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    seq, prev = rec.get("seq"), rec.get("prev_hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
        return None
    return rec


def _names_prune_point(rec: Mapping[str, Any], anchor: tuple[int, str]) -> bool:
    """True if `rec` is an audit.prune record whose last deleted record is exactly `anchor`."""
    details = rec.get("details")
    return (
        rec.get("kind") == PRUNE_KIND
        and isinstance(details, dict)
        and details.get("last_deleted_seq") == anchor[0]
        and details.get("last_deleted_hash") == anchor[1]
    )


def _valid_head(head_file: Mapping[str, Any]) -> tuple[int, str] | None:
    seq, digest = head_file.get("seq"), head_file.get("hash")
    if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and isinstance(digest, str):
        return seq, digest
    return None


def verify_chain(
    rows: Iterable[Row],
    head_file: Mapping[str, Any] | None = None,
    expect_head: str | None = None,
) -> VerifyResult:
    """Verify rows given in storage (seq) order; see the module docstring for the reasons.

    `head_file` is the parsed `audit.head` ({"seq", "hash"}) or None when there is none; it may lag
    behind the chain (a crash between commit and head rewrite) but never lead it. A malformed head
    counts as `truncated` (it is the tail witness). `expect_head` must be the hash of some record in
    the chain (the chain may have grown since it was noted). The rows are consumed lazily; after the
    first bad record they are only scanned for the prune record that may anchor the chain's start.
    """
    checked, prev_seq, prev_hash = 0, 0, GENESIS
    first = True
    anchor: tuple[int, str] | None = None  # (seq - 1, prev_hash) of a first record after seq 1
    anchor_seq = 0
    bad: tuple[int, Reason] | None = None
    head = _valid_head(head_file) if head_file is not None else None
    head_seen: bool | None = None  # None: head seq not in the chain; else whether its hash matched
    expect_seen = expect_head is None or expect_head == GENESIS
    for row in rows:
        seq, text, stored = row[0], row[1], row[2]
        rec = _parse(text)
        if bad is not None:
            if anchor is None:
                break
            if rec is not None and _names_prune_point(rec, anchor):
                anchor = None
            continue
        if rec is None or link_hash(rec["prev_hash"], text) != stored:
            bad = (seq, "edited")
        elif rec["seq"] != seq or (not first and seq <= prev_seq):
            bad = (seq, "reordered")
        elif len(row) == 4 and row[3] != index_columns(rec):
            bad = (seq, "edited")
        elif first and seq > 1:
            anchor, anchor_seq = (seq - 1, rec["prev_hash"]), seq
        elif seq != prev_seq + 1 or rec["prev_hash"] != prev_hash:
            bad = (seq, "deleted")
        if bad is not None or rec is None:
            if anchor is None:
                break
            continue
        first = False
        if anchor is not None and _names_prune_point(rec, anchor):
            anchor = None
        checked, prev_seq, prev_hash = checked + 1, seq, stored
        if head is not None and seq == head[0]:
            head_seen = stored == head[1]
        if not expect_seen and stored == expect_head:
            expect_seen = True
    if anchor is not None:
        return VerifyResult(False, 0, GENESIS, anchor_seq, "deleted")
    if bad is not None:
        return VerifyResult(False, checked, prev_hash, bad[0], bad[1])
    if head_file is not None:
        if head is None or head_seen is False:
            return VerifyResult(False, checked, prev_hash, head[0] if head else None, "truncated")
        if head[0] > prev_seq or (head[0] == 0 and head[1] != GENESIS):
            return VerifyResult(False, checked, prev_hash, prev_seq + 1, "truncated")
    if not expect_seen:
        return VerifyResult(False, checked, prev_hash, None, "truncated")
    return VerifyResult(True, checked, prev_hash)


# -- record builders: the proxy and the API build records identically ---------------------------
# DANGER: audit records are kept for the whole retention period and shown to humans. NEVER pass a
# credential value, a token, a password, a query string or a header value to these builders:
# records name things (hosts, paths without query, key NAMES, agents, emails), they never hold values.


PROXY_KINDS = frozenset({"proxy.request", "proxy.tunnel"})
DECISIONS = frozenset(
    {"injected", "passthrough", "unmatched_passthrough", "tunnel", "denied", "would_deny", "error"}
)
# An agent-vault token (SPEC §3.1): refuse to audit anything that looks like one.
_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])av_[A-Za-z0-9_-]{20,}")


def proxy_record(
    *,
    kind: Literal["proxy.request", "proxy.tunnel"] = "proxy.request",
    actor: str,
    vault: str | None,
    decision: str,
    scheme: str,
    host: str,
    port: int,
    method: str | None = None,
    path: str | None = None,
    service: str | None = None,
    auth_type: str | None = None,
    injected_keys: Iterable[str] = (),
    substituted_keys: Iterable[str] = (),
    redacted_keys: Iterable[str] = (),
    credential_sources: Mapping[str, str] | None = None,
    status: int | None = None,
    error: str | None = None,
    bytes_up: int | None = 0,
    bytes_down: int | None = 0,
    duration_ms: float = 0.0,
    http_version: str | None = None,
    would_deny_code: str | None = None,
    redaction: Literal["skipped"] | None = None,
    blocked_key: str | None = None,
    served_by: str | None = None,
    ts: str | None = None,
) -> dict[str, Any]:
    """A SPEC §12 proxy record. Key lists hold key NAMES only; `path` must be the path as the agent sent
    it (before any substitution) — its query and fragment are stripped here. Never pass header values.
    `vault` is None when unknown (refused before authentication), byte counts None when unknown.
    `would_deny_code` and `redaction` appear only when set. Raises ValueError for an unknown kind or
    decision (a programming error)."""
    if kind not in PROXY_KINDS or decision not in DECISIONS:
        raise ValueError(f"unknown proxy audit kind/decision {kind!r}/{decision!r}")
    rec: dict[str, Any] = {
        "ts": ts or utc_ts(),
        "kind": kind,
        "actor": actor,
        "vault": vault,
        "method": method,
        "scheme": scheme,
        "host": host,
        "port": port,
        "path": path.split("?", 1)[0].split("#", 1)[0] if path is not None else None,
        "service": service,
        "auth_type": auth_type,
        "injected_keys": sorted(set(injected_keys)),
        "substituted_keys": sorted(set(substituted_keys)),
        "redacted_keys": sorted(set(redacted_keys)),
        "decision": decision,
        "status": status,
        "error": error,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "duration_ms": round(float(duration_ms), 3),
        "http_version": http_version,
    }
    if would_deny_code is not None:
        rec["would_deny_code"] = would_deny_code
    if redaction is not None:
        rec["redaction"] = redaction
    if credential_sources:  # {key: command|file} for dynamic values used (names only)
        rec["credential_sources"] = dict(sorted(credential_sources.items()))
    if blocked_key is not None:  # exfiltration_blocked: the key NAME found, never its value
        rec["blocked_key"] = blocked_key
    if served_by is not None:  # issue 24: "fast" when the HTTP/1.1 fast path served it
        rec["served_by"] = served_by
    return rec


def refusal_summary(
    *,
    decision: str,
    status: int | None,
    error: str | None,
    count: int,
    first: datetime,
    last: datetime,
    window_s: float,
    clients: Iterable[str] = (),
    hosts: Iterable[str] = (),
    methods: Mapping[str, int] | None = None,
    ts: str | None = None,
) -> dict[str, Any]:
    """A `proxy.refused` record: `count` proxy requests/CONNECTs refused before the proxy knew who sent
    them (no valid token), for one cause (decision, status, error code), between `first` and `last`.
    `clients` (addresses), `hosts` (targets asked for) and `methods` ({method: count}) are samples the
    caller keeps bounded. Anonymous refusals are summarised so a client without a token cannot grow the
    log one row per attempt (SPEC §12 deviation, README)."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown proxy audit decision {decision!r}")
    return {
        "ts": ts or utc_ts(),
        "kind": SUMMARY_KIND,
        "actor": "anonymous",
        "vault": None,
        "decision": decision,
        "status": status,
        "error": error,
        "count": count,
        "first_ts": utc_ts(first),
        "last_ts": utc_ts(last),
        "window_s": window_s,
        "clients": list(clients),
        "hosts": list(hosts),
        "methods": dict(methods or {}),
    }


def _check_no_token(value: Any) -> None:
    if isinstance(value, str):
        if _TOKEN.search(value):
            raise ValueError("audit details must not contain a token")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_no_token(k)
            _check_no_token(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            _check_no_token(v)


def admin_record(
    kind: str,
    actor: str,
    vault: str | None = None,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    ts: str | None = None,
) -> dict[str, Any]:
    """A SPEC §12 admin record (`credential.set`, `agent.create`, …): {ts, kind, actor, vault, target,
    details}. `target` and `details` name things (keys, agents, emails); NEVER values, tokens,
    passwords, query strings or header values. Raises ValueError if any string in them looks like an
    agent-vault token (`av_` + 20 or more URL-safe characters)."""
    if kind in PROXY_KINDS:
        raise ValueError("use proxy_record for proxy records")
    _check_no_token(target)
    _check_no_token(details)
    return {
        "ts": ts or utc_ts(),
        "kind": kind,
        "actor": actor,
        "vault": vault,
        "target": target,
        "details": dict(details or {}),
    }
