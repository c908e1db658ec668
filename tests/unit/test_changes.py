"""The change counter (store/changes.py) on both backends: bumped in the write's own transaction by
changes to what the runtime snapshot reads, not by bookkeeping, not by a rolled-back write; on PostgreSQL a
committed change is also a NOTIFY, a rolled-back one is not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlmodel import select

from agent_vault.models import Agent, Proposal, Vault
from agent_vault.runtime import Runtime
from agent_vault.store import Store
from agent_vault.store.changes import CHANNEL, read_versions


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'x.db'}")
    else:
        s = Store(request.getfixturevalue("pg").new_database())
    try:
        yield s
    finally:
        s.close()


def _versions(store: Store) -> tuple[int, int]:
    with store.read() as s:
        return read_versions(s)


def test_identity_changes_bump_the_version_vault_changes_both(store: Store) -> None:
    assert _versions(store) == (0, 0)
    with store.write() as s:
        s.add(Agent(name="bot"))
    assert _versions(store) == (1, 0)
    with store.write() as s:
        s.add(Vault(name="v2"))
        s.add(Agent(name="bot2"))  # several changes in one transaction: one bump
    assert _versions(store) == (2, 1)
    with store.write() as s:
        agent = s.exec(select(Agent).where(Agent.name == "bot")).one()
        agent.status = "revoked"
    assert _versions(store) == (3, 1)
    with store.write() as s:
        s.delete(s.exec(select(Vault).where(Vault.name == "v2")).one())
    assert _versions(store) == (4, 2)


def test_bookkeeping_other_tables_and_rollbacks_do_not_bump(store: Store) -> None:
    with store.write() as s:
        s.add(Agent(name="bot"))
        s.add(Vault(name="v2"))
    before = _versions(store)
    with store.write() as s:
        s.exec(select(Agent).where(Agent.name == "bot")).one().last_used_at = datetime.now(UTC)
    with store.write() as s:
        vault = s.exec(select(Vault).where(Vault.name == "v2")).one()
        now = datetime.now(UTC)
        s.add(Proposal(vault_id=vault.id, seq=1, actor="agent:a", expires_at=now))
    with pytest.raises(RuntimeError), store.write() as s:
        s.add(Agent(name="doomed"))
        s.flush()  # the bump ran in this transaction...
        raise RuntimeError("...and is rolled back with it")
    assert _versions(store) == before


def test_reload_records_what_the_snapshot_reflects(store: Store) -> None:
    rt = Runtime(store, b"\0" * 32)
    rt.reload()
    assert rt.seen == (0, 0)
    with store.write() as s:
        s.add(Vault(name="v2"))
    rt.reload(vaults=False)  # identities only: the vault change is not in the snapshot yet
    assert rt.seen == (1, 0)
    rt.reload()
    assert rt.seen == (1, 1)


def test_postgres_notifies_on_commit_only(pg: Any) -> None:
    url = pg.new_database()
    store = Store(url)
    try:
        with psycopg.connect(url, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            with pytest.raises(RuntimeError), store.write() as s:
                s.add(Agent(name="doomed"))
                s.flush()
                raise RuntimeError("rolled back")
            assert list(listener.notifies(timeout=0.3)) == []
            with store.write() as s:
                s.add(Agent(name="bot"))
            got = list(listener.notifies(timeout=2, stop_after=1))
            assert [n.channel for n in got] == [CHANNEL]
    finally:
        store.close()
