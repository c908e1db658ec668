"""list_records filters and paging against a real SQLite audit table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent_vault.audit import AuditWriter, admin_record, latest_seq, list_records, proxy_record
from agent_vault.store import Store


@pytest.fixture
def engine(tmp_path: Path, db_url: str) -> Iterator[Engine]:
    store = Store(db_url)
    eng = store.engine
    assert latest_seq(eng) == 0 and list_records(eng) == []
    writer = AuditWriter(eng, tmp_path / "audit.head")
    writer.start()
    # 60 proxy records: seq 1..60, then 5 admin records: seq 61..65.
    for i in range(60):
        writer.submit(
            proxy_record(
                actor=["agent:ci-bot", "session:7:agent:ci-bot", "agent:other", "user:a@example.com"][i % 4],
                vault="default" if i % 2 == 0 else "prod",
                decision="injected" if i % 3 else "denied",
                scheme="https",
                host="api.example.com" if i < 30 else "api.other.com",
                port=443,
                method="GET",
                path=f"/v1/{i}",
                service="example" if i % 5 == 0 else None,
                status=[200, 404, 403, 502][i % 4],
                ts=f"2026-01-{1 + i // 10:02d}T00:00:00.000000Z",
            )
        )
    for i in range(5):
        writer.submit(admin_record("credential.set", "user:a@example.com", "default", f"K{i}"))
    writer.close()
    yield eng
    store.close()


def seqs(rows: list[dict[str, object]]) -> list[object]:
    return [r["seq"] for r in rows]


def test_records_come_back_parsed_with_hash(engine: Engine) -> None:
    rows = list_records(engine, limit=3)
    assert seqs(rows) == [63, 64, 65]  # newest page, ascending
    assert all(len(str(r["hash"])) == 64 and r["kind"] == "credential.set" for r in rows)
    assert latest_seq(engine) == 65


def test_paging_forward_and_backward(engine: Engine) -> None:
    assert seqs(list_records(engine, after_seq=10, limit=3)) == [11, 12, 13]
    assert seqs(list_records(engine, before_seq=10, limit=3)) == [7, 8, 9]
    assert seqs(list_records(engine, after_seq=10, before_seq=13, limit=10)) == [11, 12]
    assert list_records(engine, after_seq=65) == []
    with pytest.raises(ValueError):
        list_records(engine, limit=0)


def test_filters(engine: Engine) -> None:
    assert {r["vault"] for r in list_records(engine, vault="prod", limit=100)} == {"prod"}
    assert len(list_records(engine, kind="credential.set", limit=100)) == 5
    assert len(list_records(engine, kind="proxy.*", limit=100)) == 60
    agent = list_records(engine, agent="ci-bot", limit=100)
    assert {r["actor"] for r in agent} == {"agent:ci-bot", "session:7:agent:ci-bot"} and len(agent) == 30
    assert list_records(engine, agent="ci") == []
    assert len(list_records(engine, decision="denied", limit=100)) == 20
    assert {r["status"] for r in list_records(engine, status_class="4xx", limit=100)} == {403, 404}
    assert {r["status"] for r in list_records(engine, status_class="502", limit=100)} == {502}
    assert list_records(engine, status_class="err") == []
    with pytest.raises(ValueError):
        list_records(engine, status_class="teapot")
    assert {r["host"] for r in list_records(engine, host="api.other.com", limit=100)} == {"api.other.com"}
    since = list_records(engine, since=datetime(2026, 1, 6, tzinfo=UTC), kind="proxy.*", limit=100)
    assert seqs(since) == list(range(51, 61))


def test_service_filter_scans_past_non_matching_rows(engine: Engine) -> None:
    rows = list_records(engine, service="example", limit=4)
    assert seqs(rows) == [41, 46, 51, 56] and all(r["service"] == "example" for r in rows)
    assert seqs(list_records(engine, service="example", after_seq=0, limit=2)) == [1, 6]
    assert seqs(list_records(engine, service="example", vault="default", limit=100)) == [
        1,
        11,
        21,
        31,
        41,
        51,
    ]
