"""The PostgreSQL store against a real server (tests/helpers/pg.py): URLs, types, the cross-replica
writer lock, concurrent migration, and errors that never echo the URL's password."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from agent_vault.errors import DatabaseUnreadable, InvalidRequest
from agent_vault.models import Credential, Vault
from agent_vault.store import Store
from agent_vault.store.migrations import LATEST


def test_both_url_spellings_open_and_say_their_dialect(pg: Any) -> None:
    url = pg.new_database()
    for spelling in (url, url.replace("postgresql://", "postgresql+psycopg://")):
        store = Store(spelling)
        try:
            assert store.dialect == "postgresql" and store.schema_version == LATEST
            with store.read() as s:
                assert s.connection().exec_driver_sql("SHOW timezone").scalar() == "UTC"
        finally:
            store.close()
    assert repr(store) == f"Store(dialect=postgresql, schema_version={LATEST})"  # never the URL


def test_aware_timestamps_and_bytes_round_trip(pg: Any) -> None:
    store = Store(pg.new_database())
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    try:
        with store.write() as s:
            v = Vault(name="v", created_at=when)
            s.add(v)
            s.flush()
            assert v.id is not None
            s.add(Credential(vault_id=v.id, key="K", ciphertext=b"\x00\xffsealed", source_ttl=1.5))
        with store.read() as s:
            got = s.exec(select(Vault)).one()
            cred = s.exec(select(Credential)).one()
        assert got.created_at == when and got.created_at.utcoffset() is not None
        assert cred.ciphertext == b"\x00\xffsealed" and cred.source_ttl == 1.5
    finally:
        store.close()


def test_writers_in_two_stores_serialize_like_one_process(pg: Any) -> None:
    """Two Stores on one database (two replicas): concurrent read-modify-write of next_proposal_seq
    loses no increment, because every write() takes the same advisory transaction lock first."""
    url = pg.new_database()
    a, b = Store(url), Store(url)
    try:
        with a.write() as s:
            s.add(Vault(name="v"))
        rounds, errors = 15, []

        def bump(store: Store) -> None:
            try:
                for _ in range(rounds):
                    with store.write() as s:
                        v = s.exec(select(Vault)).one()
                        v.next_proposal_seq += 1
                        s.add(v)
            except Exception as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=bump, args=(st,)) for st in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        with b.read() as s:
            assert s.exec(select(Vault)).one().next_proposal_seq == 1 + 4 * rounds
    finally:
        a.close()
        b.close()


def test_nested_write_in_one_thread_does_not_deadlock(pg: Any) -> None:
    store = Store(pg.new_database())
    try:
        with store.write() as outer:
            outer.add(Vault(name="outer"))
            with store.write() as inner:
                inner.add(Vault(name="inner"))
        with store.read() as s:
            assert sorted(v.name for v in s.exec(select(Vault))) == ["inner", "outer"]
    finally:
        store.close()


def test_replicas_starting_together_migrate_once(pg: Any) -> None:
    url = pg.new_database()
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(Store(url))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not errors and len(stores) == 4
        with stores[0].read() as s:
            versions = [r[0] for r in s.connection().execute(text("SELECT version FROM schema_migrations"))]
        assert sorted(versions) == list(range(1, LATEST + 1))
    finally:
        for st in stores:
            st.close()


def test_unreachable_database_is_one_line_without_the_password(pg: Any) -> None:
    secret = "pw-Zq81-never-shown"
    bad = [
        f"postgresql://someone:{secret}@127.0.0.1:{pg.port}/no_such_db",
        f"postgresql://postgres:{secret}@127.0.0.1:1/x",
    ]
    for url in bad:
        with pytest.raises(DatabaseUnreadable) as info:
            Store(url)
        err = info.value
        shown = f"{err.message} {err.hint} {err!r} {err.__cause__!r} {err.__context__!r}"
        assert secret not in shown and "\n" not in err.message
        assert "***" in err.message and f"{err.message}".startswith("cannot open the database postgresql://")
    with pytest.raises(InvalidRequest) as info2:
        Store(f"mysql://u:{secret}@h/db")
    assert secret not in info2.value.message


def test_a_postgres_restart_is_ridden_out_by_the_pool(pg: Any) -> None:
    """Connections the pool holds die with the server; pre-ping replaces them on the next checkout."""
    store = Store(pg.new_database())
    try:
        with store.write() as s:
            s.add(Vault(name="before"))
        pg.restart()
        with store.read() as s:
            assert [v.name for v in s.exec(select(Vault))] == ["before"]
        with store.write() as s:
            s.add(Vault(name="after"))
    finally:
        store.close()
