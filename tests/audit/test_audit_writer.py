"""AuditWriter against a real SQLite file: concurrency, overflow, failures, crash safety."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlmodel import create_engine

from agent_vault.audit import AuditWriter, admin_record, list_records, proxy_record, read_head, verify_db
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


def seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT seq FROM audit_events ORDER BY seq"))]


def rec(i: int, who: str = "t") -> dict[str, Any]:
    return admin_record("credential.set", f"agent:{who}", "default", f"{who}-{i}")


def test_20_producer_threads_make_one_contiguous_chain(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head)
    writer.start()
    results: list[bool] = []

    def produce(t: int) -> None:
        results.extend(writer.submit(rec(i, f"p{t}")) for i in range(1000))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    writer.flush(timeout=60)
    writer.close()
    assert results.count(True) == 20_000 and writer.dropped_total == 0 and writer.depth == 0
    assert seqs(engine) == list(range(1, 20_001))
    result = verify_db(engine, head)
    assert result.ok and result.checked == 20_000
    rows = list_records(engine, after_seq=0, limit=20_000)
    for t in range(20):  # every record present, each producer's order kept
        mine = [r["target"] for r in rows if r["actor"] == f"agent:p{t}"]
        assert mine == [f"p{t}-{i}" for i in range(1000)]


def test_overflow_is_recorded_as_one_gap_with_the_exact_count(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head, max_queue=10)
    accepted = [writer.submit(rec(i)) for i in range(25)]  # queued before start
    assert accepted == [True] * 10 + [False] * 15
    assert writer.depth == 10 and writer.dropped_total == 15
    writer.start()
    writer.flush()
    assert writer.submit(rec(99))
    writer.close()
    rows = list_records(engine, limit=100)
    assert len(rows) == 12
    gaps = [r for r in rows if r["kind"] == "audit.gap"]
    assert len(gaps) == 1 and gaps[0]["details"] == {"dropped": 15} and gaps[0]["seq"] == 11
    assert rows[-1]["target"] == "t-99"
    assert verify_db(engine, head).ok


def test_audit_head_is_created_0600(engine: Engine, head: Path) -> None:
    old = os.umask(0)
    try:
        writer = AuditWriter(engine, head)
        writer.start()
        writer.submit(rec(1))
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    assert read_head(head) == {"seq": 1, "hash": list_records(engine)[0]["hash"]}


def test_submit_copies_and_stamps_records(engine: Engine, head: Path) -> None:
    committed: list[dict[str, Any]] = []
    writer = AuditWriter(engine, head, on_commit=committed.extend)
    original = proxy_record(
        actor="agent:a", vault="v", decision="tunnel", kind="proxy.tunnel", scheme="tcp", host="h", port=22
    )
    original["hash"] = "forged"
    writer.start()
    assert writer.submit(original)
    del original["ts"]
    assert writer.submit(original)
    writer.close()
    assert original["hash"] == "forged" and "seq" not in original
    assert [c["seq"] for c in committed] == [1, 2]
    assert committed[1]["prev_hash"] == committed[0]["hash"] and committed[1]["ts"].endswith("Z")
    assert [r["hash"] for r in list_records(engine)] == [c["hash"] for c in committed]


def test_reserved_or_missing_kinds_are_refused(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head)
    for bad in ({"actor": "x"}, {"kind": "audit.gap"}, {"kind": "audit.prune"}, {"kind": 3}):
        with pytest.raises(ValueError):
            writer.submit(bad)


def test_unserialisable_value_is_replaced_by_a_marker_and_counted(engine: Engine, head: Path) -> None:
    """A value JSON cannot hold no longer costs its record: the record is written with a marker in
    place of that value, counted in dropped_total (no audit.gap: the marker record is the witness)."""
    writer = AuditWriter(engine, head)
    writer.start()
    assert writer.submit(rec(1))
    assert writer.submit({"kind": "credential.set", "actor": "a", "details": {"oops": object(), "k": "v"}})
    assert writer.submit(rec(2))
    writer.flush()
    writer.close()
    kinds = [(r["kind"], r.get("details")) for r in list_records(engine)]
    assert kinds[1] == ("credential.set", {"oops": "[unencodable]", "k": "v"}) and len(kinds) == 3
    assert writer.dropped_total == 1 and writer.replaced_total == 1
    assert verify_db(engine, head).ok


def test_commit_failures_are_retried_and_logged_without_contents(
    engine: Engine, head: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failures = {"left": 3}

    def fail_inserts(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO audit_events") and failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")

    event.listen(engine, "before_cursor_execute", fail_inserts)
    writer = AuditWriter(engine, head)
    writer.start()
    with caplog.at_level(logging.ERROR, logger="agent_vault.audit"):
        for i in range(50):
            writer.submit(admin_record("credential.set", "agent:x", target=f"SECRET_NAME_{i}"))
        writer.flush(timeout=30)
        writer.close()
    assert failures["left"] == 0
    assert seqs(engine) == list(range(1, 51))
    assert verify_db(engine, head).ok
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying" in m for m in messages) == 3
    assert not any("SECRET_NAME" in m or "INSERT" in m for m in messages)


def test_restart_continues_the_chain(engine: Engine, head: Path) -> None:
    for round_ in range(3):
        writer = AuditWriter(engine, head, batch_size=7)
        writer.start()
        for i in range(20):
            writer.submit(rec(i, f"r{round_}"))
        writer.close()
    assert seqs(engine) == list(range(1, 61))
    assert verify_db(engine, head).ok


def test_flush_and_prune_need_a_running_writer(engine: Engine, head: Path) -> None:
    writer = AuditWriter(engine, head)
    writer.flush()  # nothing pending: returns at once
    writer.submit(rec(1))
    with pytest.raises(RuntimeError):
        writer.flush()
    with pytest.raises(RuntimeError):
        writer.prune(__import__("datetime").datetime(2020, 1, 1))
    writer.close()  # never started: nothing to join


CRASH_SCRIPT = """
import sys
from pathlib import Path
from sqlmodel import SQLModel, create_engine
from agent_vault.audit import AuditWriter, admin_record

engine = create_engine("sqlite:///" + sys.argv[1])
SQLModel.metadata.create_all(engine)
writer = AuditWriter(engine, Path(sys.argv[2]), batch_size=50, interval=0.001)
writer.start()
i = 0
while True:
    writer.submit(admin_record("credential.set", "agent:crash", target=f"K{i}"))
    i += 1
    if i == 2000:
        writer.flush(timeout=60)
        print("committed", flush=True)
"""


def test_sigkill_mid_write_leaves_a_verifiable_chain(tmp_path: Path) -> None:
    db, head = tmp_path / "crash.db", tmp_path / "audit.head"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(db), str(head)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "committed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    engine = create_engine("sqlite:///" + str(db))
    try:
        first = verify_db(engine, head)
        assert first.ok and first.checked >= 2000
        writer = AuditWriter(engine, head)  # the next server start continues after the kill
        writer.start()
        writer.submit(rec(1, "after"))
        writer.close()
        second = verify_db(engine, head)
        assert second.ok and second.checked == first.checked + 1
    finally:
        engine.dispose()
