"""One audit chain, several writers (replicas on one PostgreSQL, audit/shared.py): concurrent appends from
three writers form one gap-free chain that verifies against any writer's head; a tail cut below what a
writer committed stays visible."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text

from agent_vault.audit import AuditWriter, admin_record, latest_seq, list_records, verify_db
from agent_vault.store import Store


def test_concurrent_writers_on_one_database_make_one_chain(pg: Any, tmp_path: Path) -> None:
    url = pg.new_database()
    stores = [Store(url) for _ in range(3)]
    writers = [
        AuditWriter(s.engine, tmp_path / f"head-{i}", batch_size=7, interval=0.01)
        for i, s in enumerate(stores)
    ]
    for w in writers:
        w.start()

    def produce(i: int, w: AuditWriter) -> None:
        for n in range(200):
            assert w.submit(admin_record("agent.create", f"user:{i}@example.com", target=f"bot-{n}"))

    try:
        threads = [threading.Thread(target=produce, args=(i, w)) for i, w in enumerate(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for w in writers:
            w.flush(timeout=30)
        engine = stores[0].engine
        assert latest_seq(engine) == 600
        for i in range(3):  # `logs verify` on any replica: its own audit.head is within the chain
            result = verify_db(engine, tmp_path / f"head-{i}")
            assert result.ok and result.checked == 600, result
        actors = {r["actor"] for r in list_records(engine, kind="agent.create", limit=1000)}
        assert actors == {f"user:{i}@example.com" for i in range(3)}
    finally:
        for w in writers:
            w.close()
        for s in stores:
            s.close()


def test_a_cut_tail_stays_visible_with_another_writer_on_the_database(pg: Any, tmp_path: Path) -> None:
    url = pg.new_database()
    a, b = Store(url), Store(url)
    wa = AuditWriter(a.engine, tmp_path / "head-a", interval=0.01)
    wb = AuditWriter(b.engine, tmp_path / "head-b", interval=0.01)
    wa.start()
    wb.start()
    try:
        for n in range(10):
            wa.submit(admin_record("agent.create", "user:a@example.com", target=f"bot-{n}"))
        wa.flush()
        with a.engine.begin() as conn:  # someone with database access cuts the last 3 records
            conn.execute(text("DELETE FROM audit_events WHERE seq > 7"))
        wa.submit(admin_record("agent.create", "user:a@example.com", target="after"))
        wa.flush()
        wb.submit(admin_record("agent.create", "user:b@example.com", target="after"))
        wb.flush()
        result = verify_db(a.engine, tmp_path / "head-b")
        assert (result.first_bad_seq, result.reason) == (11, "deleted")
    finally:
        wa.close()
        wb.close()
        a.close()
        b.close()
