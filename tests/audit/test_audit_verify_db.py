"""Tampering with a real SQLite audit table is detected by verify_db; retention keeps it verifiable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from agent_vault.audit import (
    AuditWriter,
    admin_record,
    canonical,
    latest_seq,
    link_hash,
    list_records,
    prune,
    read_head,
    verify_db,
)
from agent_vault.store import Store


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated store on each backend (tests/conftest.py `db_url`)."""
    store = Store(db_url)
    yield store.engine
    store.close()


@pytest.fixture
def head(tmp_path: Path) -> Path:
    return tmp_path / "audit.head"


def fill(engine: Engine, head: Path, n: int, ts: str | None = None) -> None:
    writer = AuditWriter(engine, head)
    writer.start()
    for i in range(n):
        rec = admin_record("credential.set", "user:a@example.com", "default", f"KEY_{i}")
        if ts is not None:
            rec["ts"] = ts
        assert writer.submit(rec)
    writer.close()


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


@pytest.fixture
def chain(engine: Engine, head: Path) -> Engine:
    fill(engine, head, 1000)
    return engine


def test_intact_chain_of_1000_verifies(chain: Engine, head: Path) -> None:
    result = verify_db(chain, head)
    assert result.ok and result.checked == 1000
    assert read_head(head) == {"seq": 1000, "hash": result.head}
    assert verify_db(chain, head, expect_head=result.head).ok


def test_edited_record_is_reported(chain: Engine, head: Path) -> None:
    sql(chain, "UPDATE audit_events SET record = replace(record, 'KEY_499', 'KEY_X') WHERE seq = 500")
    result = verify_db(chain, head)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 500, "edited", 499)


def test_edited_index_column_is_reported(chain: Engine, head: Path) -> None:
    # Filters use the columns: changing one would hide a record from a filtered listing.
    sql(chain, "UPDATE audit_events SET vault = 'other' WHERE seq = 42")
    result = verify_db(chain, head)
    assert (result.first_bad_seq, result.reason) == (42, "edited")


def test_deleted_record_is_reported_after_the_gap(chain: Engine, head: Path) -> None:
    sql(chain, "DELETE FROM audit_events WHERE seq = 500")
    result = verify_db(chain, head)
    assert (result.ok, result.first_bad_seq, result.reason) == (False, 501, "deleted")


def test_deleted_first_record_is_reported(chain: Engine, head: Path) -> None:
    sql(chain, "DELETE FROM audit_events WHERE seq = 1")
    assert (verify_db(chain, head).first_bad_seq, verify_db(chain, head).reason) == (2, "deleted")


def test_swapped_records_are_reordered_at_the_first_one(chain: Engine, head: Path) -> None:
    with chain.begin() as conn:
        a = conn.execute(text("SELECT record, hash FROM audit_events WHERE seq = 300")).one()
        b = conn.execute(text("SELECT record, hash FROM audit_events WHERE seq = 310")).one()
        upd = text("UPDATE audit_events SET record = :r, hash = :h WHERE seq = :s")
        conn.execute(upd, {"r": b[0], "h": b[1], "s": 300})
        conn.execute(upd, {"r": a[0], "h": a[1], "s": 310})
    result = verify_db(chain, head)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 300, "reordered", 299)


def test_rehashed_edit_breaks_the_next_link(chain: Engine, head: Path) -> None:
    # An attacker who recomputes the edited record's own hash still breaks the next record's prev_hash.
    with chain.begin() as conn:
        rec = json.loads(conn.execute(text("SELECT record FROM audit_events WHERE seq = 600")).scalar_one())
        rec["target"] = "SOMETHING_ELSE"
        body = canonical(rec)
        conn.execute(
            text("UPDATE audit_events SET record = :r, hash = :h WHERE seq = 600"),
            {"r": body, "h": link_hash(rec["prev_hash"], body)},
        )
    result = verify_db(chain, head)
    assert (result.first_bad_seq, result.reason) == (601, "deleted")


def test_truncated_tail_is_caught_by_audit_head(chain: Engine, head: Path) -> None:
    noted = verify_db(chain, head).head
    sql(chain, "DELETE FROM audit_events WHERE seq > 990")
    result = verify_db(chain, head)
    assert (result.ok, result.first_bad_seq, result.reason, result.checked) == (False, 991, "truncated", 990)
    # Without the head file only --expect-head can tell.
    head.unlink()
    assert verify_db(chain, head).ok
    assert verify_db(chain, head, expect_head=noted).reason == "truncated"


def test_restarted_writer_keeps_a_cut_tail_visible(chain: Engine, head: Path) -> None:
    sql(chain, "DELETE FROM audit_events WHERE seq > 990")
    fill(chain, head, 5)  # the server restarts and keeps writing
    result = verify_db(chain, head)
    assert (result.first_bad_seq, result.reason) == (1001, "deleted")
    assert latest_seq(chain) == 1005


def test_prune_with_running_writer_keeps_the_chain_verifiable(engine: Engine, head: Path) -> None:
    fill(engine, head, 100, ts="2020-01-01T00:00:00.000000Z")
    fill(engine, head, 50)
    writer = AuditWriter(engine, head)
    writer.start()
    try:
        assert prune(engine, datetime(2021, 1, 1, tzinfo=UTC), writer=writer) == 100
        assert writer.submit(admin_record("agent.create", "user:o@example.com", target="bot"))
        writer.flush()
    finally:
        writer.close()
    result = verify_db(engine, head)
    assert result.ok and result.checked == 52
    marks = list_records(engine, kind="audit.prune")
    assert [m["seq"] for m in marks] == [151]
    assert marks[0]["details"]["last_deleted_seq"] == 100 and marks[0]["details"]["deleted"] == 100
    assert read_head(head) == {"seq": 152, "hash": result.head}


def test_repeated_and_total_prunes_verify(engine: Engine, head: Path) -> None:
    fill(engine, head, 20, ts="2020-01-01T00:00:00.000000Z")
    assert prune(engine, datetime(2021, 1, 1), head_path=head) == 20  # direct mode, no writer
    assert verify_db(engine, head).ok
    fill(engine, head, 10, ts="2022-01-01T00:00:00.000000Z")
    # Deletes everything, the first prune record included: the new prune record anchors itself.
    assert prune(engine, datetime.now(UTC) + timedelta(days=1), head_path=head) == 11
    result = verify_db(engine, head)
    assert result.ok and result.checked == 1
    assert prune(engine, datetime(2019, 1, 1), head_path=head) == 0
    fill(engine, head, 3)
    assert verify_db(engine, head).ok and latest_seq(engine) == 35


def test_deleting_past_a_prune_point_is_detected(engine: Engine, head: Path) -> None:
    fill(engine, head, 10, ts="2020-01-01T00:00:00.000000Z")
    fill(engine, head, 10)
    assert prune(engine, datetime(2021, 1, 1), head_path=head) == 10
    sql(engine, "DELETE FROM audit_events WHERE seq = 11")
    result = verify_db(engine, head)
    assert (result.first_bad_seq, result.reason) == (12, "deleted")


def test_prune_only_removes_a_prefix(engine: Engine, head: Path) -> None:
    fill(engine, head, 5, ts="2020-01-01T00:00:00.000000Z")
    fill(engine, head, 1, ts="2023-01-01T00:00:00.000000Z")
    fill(engine, head, 5, ts="2020-01-01T00:00:00.000000Z")  # out-of-order ts are kept
    assert prune(engine, datetime(2021, 1, 1), head_path=head) == 5
    assert verify_db(engine, head).ok and len(list_records(engine, limit=100)) == 7
