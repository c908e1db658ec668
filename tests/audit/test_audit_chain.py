"""Pure chain and record-builder tests: no DB."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_vault.audit import (
    GENESIS,
    admin_record,
    canonical,
    link_hash,
    proxy_record,
    utc_ts,
    verify_chain,
)


def build(records: list[dict[str, Any]], start: int = 1, prev: str = GENESIS) -> list[tuple[int, str, str]]:
    """Link records the way the writer does: (seq, canonical text, hash)."""
    rows = []
    for i, rec in enumerate(records):
        rec = {**rec, "seq": start + i, "prev_hash": prev}
        text = canonical(rec)
        prev = link_hash(rec["prev_hash"], text)
        rows.append((rec["seq"], text, prev))
    return rows


def recs(n: int) -> list[dict[str, Any]]:
    return [admin_record("credential.set", "user:a@example.com", "default", f"KEY_{i}") for i in range(n)]


def test_canonical_and_link_hash_follow_the_spec() -> None:
    rec = {"b": 1, "a": "é", "hash": "ignored"}
    assert canonical(rec) == '{"a":"é","b":1}'
    assert (
        link_hash(GENESIS, '{"a":1}')
        == __import__("hashlib").sha256(f'{GENESIS}{{"a":1}}'.encode()).hexdigest()
    )
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_intact_chain_of_1000_verifies() -> None:
    rows = build(recs(1000))
    result = verify_chain(rows)
    assert result.ok and result.checked == 1000 and result.head == rows[-1][2]
    assert result.first_bad_seq is None and result.reason is None


def test_empty_chain_is_ok() -> None:
    assert verify_chain([]).ok
    assert verify_chain([], {"seq": 0, "hash": GENESIS}).ok
    assert verify_chain([], {"seq": 3, "hash": "ab" * 32}).reason == "truncated"


def test_edited_text_is_reported_at_its_seq() -> None:
    rows = build(recs(10))
    seq, text, digest = rows[4]
    rows[4] = (seq, text.replace("KEY_4", "KEY_X"), digest)
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 5, "edited", 4)
    assert result.head == rows[3][2]


def test_garbage_record_is_edited() -> None:
    rows = build(recs(3))
    rows[1] = (2, "not json", rows[1][2])
    assert verify_chain(rows).reason == "edited"


def test_rows_out_of_seq_order_are_reordered() -> None:
    rows = build(recs(5))
    result = verify_chain([rows[0], rows[1], rows[1], rows[2]])
    assert (result.first_bad_seq, result.reason) == (2, "reordered")


def test_gap_is_deleted_naming_the_seq_after_it() -> None:
    rows = build(recs(10))
    del rows[6]
    assert (verify_chain(rows).first_bad_seq, verify_chain(rows).reason) == (8, "deleted")


def test_missing_first_record_without_prune_point_is_deleted() -> None:
    rows = build(recs(10))[1:]
    result = verify_chain(rows)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 2, "deleted", 0)


def test_chain_may_start_after_a_recorded_prune_point() -> None:
    rows = build(recs(10))
    last_deleted_seq, _, last_deleted_hash = rows[3]
    prune = admin_record(
        "audit.prune",
        "server",
        details={"last_deleted_seq": last_deleted_seq, "last_deleted_hash": last_deleted_hash},
    )
    rows += build([prune], start=11, prev=rows[-1][2])
    assert verify_chain(rows[4:]).ok
    # The same prune record cannot excuse a start anywhere else.
    result = verify_chain(rows[5:])
    assert (result.first_bad_seq, result.reason) == (6, "deleted")


def test_unanchored_start_wins_over_a_later_error() -> None:
    rows = build(recs(10))[3:]
    rows[5] = (rows[5][0], rows[5][1], "f" * 64)
    assert (verify_chain(rows).first_bad_seq, verify_chain(rows).reason) == (4, "deleted")


def test_head_file_detects_tail_truncation_and_may_lag() -> None:
    rows = build(recs(10))
    head = {"seq": 10, "hash": rows[-1][2]}
    assert verify_chain(rows, head).ok
    assert verify_chain(rows, {"seq": 7, "hash": rows[6][2]}).ok  # crash between commit and head rewrite
    result = verify_chain(rows[:8], head)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 9, "truncated", 8)
    wrong = verify_chain(rows, {"seq": 7, "hash": rows[5][2]})
    assert (wrong.first_bad_seq, wrong.reason) == (7, "truncated")
    assert verify_chain(rows, {}).reason == "truncated"
    assert verify_chain(rows, {"seq": "10", "hash": 1}).reason == "truncated"


def test_expect_head_must_be_in_the_chain() -> None:
    rows = build(recs(10))
    assert verify_chain(rows, expect_head=rows[-1][2]).ok
    assert verify_chain(rows, expect_head=rows[4][2]).ok  # the chain grew since it was noted
    result = verify_chain(rows[:8], expect_head=rows[-1][2])
    assert (result.ok, result.reason) == (False, "truncated")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=12),
    data=st.data(),
)
def test_any_single_change_of_a_stored_record_is_detected(n: int, data: st.DataObject) -> None:
    rows = build(recs(n))
    head = {"seq": n, "hash": rows[-1][2]}
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    seq, text, digest = rows[i]
    rec = json.loads(text)
    key = data.draw(st.sampled_from(sorted(rec)))
    rec[key] = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    new_text = canonical(rec)
    if new_text == text:
        return
    rows[i] = (seq, new_text, digest)
    result = verify_chain(rows, head)
    assert not result.ok and result.first_bad_seq == seq and result.reason == "edited"


def test_utc_ts_format() -> None:
    when = datetime(2026, 11, 23, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert utc_ts(when) == "2026-11-23T10:00:00.123456Z"
    assert utc_ts(datetime(2026, 11, 23, 10, 0)) == "2026-11-23T10:00:00.000000Z"
    assert utc_ts().endswith("Z") and len(utc_ts(datetime.now(UTC))) == 27
    for _ in range(3):  # now: the same text as the datetime route, to the microsecond's rounding
        before, now, after = datetime.now(UTC), utc_ts(), datetime.now(UTC)
        parsed = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before - timedelta(microseconds=1) <= parsed <= after, (before, now, after)
        time.sleep(0.6)  # across a second boundary too


def test_proxy_record_fields_and_path_hygiene() -> None:
    rec = proxy_record(
        actor="session:12:agent:ci-bot",
        vault="default",
        decision="injected",
        scheme="https",
        host="api.example.com",
        port=443,
        method="GET",
        path="/v1/items?token=abc#frag",
        service="example",
        auth_type="bearer",
        injected_keys=["EXAMPLE_KEY", "EXAMPLE_KEY"],
        status=200,
        duration_ms=1.23456,
        http_version="HTTP/1.1",
    )
    assert rec["path"] == "/v1/items"
    assert rec["injected_keys"] == ["EXAMPLE_KEY"] and rec["duration_ms"] == 1.235
    assert "would_deny_code" not in rec and "redaction" not in rec
    for name in ("seq", "hash", "prev_hash"):
        assert name not in rec
    expected = {
        "ts", "kind", "actor", "vault", "method", "scheme", "host", "port", "path", "service", "auth_type",
        "injected_keys", "substituted_keys", "redacted_keys", "decision", "status", "error", "bytes_up",
        "bytes_down", "duration_ms", "http_version",
    }  # fmt: skip
    assert set(rec) == expected
    dry = proxy_record(
        actor="agent:x",
        vault="v",
        decision="would_deny",
        scheme="https",
        host="h",
        port=443,
        path="/p#x",
        would_deny_code="service_not_allowed",
        redaction="skipped",
    )
    assert (dry["path"], dry["would_deny_code"], dry["redaction"]) == ("/p", "service_not_allowed", "skipped")
    with pytest.raises(ValueError):
        proxy_record(actor="a", vault="v", decision="allowed", scheme="https", host="h", port=1)


def test_admin_record_refuses_anything_that_looks_like_a_token() -> None:
    rec = admin_record("agent.create", "user:o@example.com", "default", "ci-bot", {"role": "proxy"})
    assert rec["details"] == {"role": "proxy"} and rec["target"] == "ci-bot"
    token = "av_agt_" + "A" * 43
    with pytest.raises(ValueError) as err:
        admin_record("agent.rotate", "user:o@example.com", details={"new": [f"x {token}"]})
    assert token not in str(err.value)
    with pytest.raises(ValueError):
        admin_record("agent.rotate", "user:o@example.com", target=token)
    with pytest.raises(ValueError):
        admin_record("agent.rotate", "user:o@example.com", details={token: 1})
    # Names that merely start with av_ are fine.
    assert admin_record("credential.set", "agent:x", details={"key": "av_short", "k2": "nav_" + "a" * 30})
    with pytest.raises(ValueError):
        admin_record("proxy.request", "agent:x")
