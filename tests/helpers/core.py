"""An in-process, unlocked Core over a real store (SQLite, or PostgreSQL via `database_url`), no sockets,
for API and domain tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_vault.audit import AuditWriter
from agent_vault.config import Settings
from agent_vault.core import Core
from agent_vault.home import Home, ensure_dir
from agent_vault.instance import init_instance, unlock
from agent_vault.metrics import Metrics
from agent_vault.runtime import Runtime

OWNER_EMAIL = "owner@example.com"
OWNER_PASSWORD = "owner-password-123"
MASTER_PASSWORD = "master-password-123456"


@contextmanager
def make_core(home: Path, key_mode: str = "password", **settings: object) -> Iterator[Core]:
    """Initialise a new instance in `home` and yield its unlocked Core."""
    s = Settings(home=home, **settings)  # type: ignore[arg-type]
    init_instance(
        s,
        key_mode=key_mode,
        owner_email=OWNER_EMAIL,
        owner_password=OWNER_PASSWORD,
        master_password=MASTER_PASSWORD if key_mode != "passwordless" else None,
    )
    with open_core(s, MASTER_PASSWORD if key_mode != "passwordless" else None) as core:
        yield core


@contextmanager
def open_core(s: Settings, master_password: str | None = None) -> Iterator[Core]:
    """The unlocked Core of the existing instance in `s.home` (closed on exit), as a server has it."""
    ensure_dir(s.home)  # a PostgreSQL instance has no home of its own; a server's lock makes it
    u = unlock(s, master_password)
    runtime = Runtime(u.store, u.dek)
    runtime.reload()
    audit = AuditWriter(u.store.engine, Home(s.home).audit_head)
    audit.start()
    core = Core(
        s,
        Home(s.home),
        u.store,
        u.instance_id,
        u.key_mode,
        u.dek,
        u.ca,
        runtime,
        audit,
        proxy_port=14322,
        api_url="http://127.0.0.1:14321",
    )
    core.services.metrics = Metrics()
    try:
        yield core
    finally:
        audit.close()
        u.store.close()
