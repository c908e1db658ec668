"""Creating (`init`) and opening (unlock at `server` start) an instance.

The instance lives in its database: the `instance_state` row (id, key mode, CA with its key sealed under
the DEK) and the wrapped DEK. A SQLite home also keeps instance.json (the marker `server` and `init`
look for); a home made before the row existed has its identity and CA files copied into the row, still
sealed, the first time it is opened. With PostgreSQL the home holds no instance state at all, so any
number of replicas on any host open the same instance with the master password.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from agent_vault import keys
from agent_vault.config import Settings
from agent_vault.domain.names import check_email
from agent_vault.errors import Conflict, InvalidRequest, NotInitialised
from agent_vault.home import Home, ensure_dir, write_private
from agent_vault.models import Grant, InstanceState, User, Vault, utcnow
from agent_vault.passwords import hash_password
from agent_vault.store import Store
from agent_vault.store.migrations import LATEST

PG_PASSWORDLESS = (
    "passwordless mode is not available with PostgreSQL (its key file would be local to one host)"
)


@dataclass(frozen=True)
class Unlocked:
    store: Store
    instance_id: str
    key_mode: str
    dek: bytes
    ca: keys.CA

    def __repr__(self) -> str:
        return f"Unlocked(instance={self.instance_id}, key_mode={self.key_mode})"


@dataclass(frozen=True)
class Identity:
    """What is known before unlock: enough to pick the master password's sources."""

    instance_id: str
    key_mode: str


def _check_init(
    settings: Settings, key_mode: str, email: str, owner_password: str, master: str | None
) -> None:
    if key_mode not in keys.KEY_MODES:
        raise InvalidRequest(f"unknown key mode {key_mode!r}", hint="Use password, keyring or passwordless.")
    if key_mode == "passwordless" and settings.uses_postgres:
        raise InvalidRequest(PG_PASSWORDLESS, hint="Use --key-mode password or keyring.")
    check_email(email)
    if len(owner_password) < 8:
        raise InvalidRequest(
            "the owner's login password must be at least 8 characters", hint="Choose a longer one."
        )
    if key_mode != "passwordless":
        if master is None:
            raise InvalidRequest("a master password is required", hint="Set AGENT_VAULT_MASTER_PASSWORD.")
        keys.check_master_password(master)
        if master == owner_password:
            raise keys.same_as_login(master)


def _already(row: InstanceState) -> Conflict:
    return Conflict(
        f"the database already holds agent-vault instance {row.instance_id[:8]}",
        hint="Start replicas with 'agent-vault server --database-url URL'; init runs once per database.",
    )


def init_instance(
    settings: Settings,
    *,
    key_mode: str,
    owner_email: str,
    owner_password: str,
    master_password: str | None,
) -> str:
    """Create the DEK, CA, instance row, the owner and vault `default` (one transaction), plus, for
    SQLite, the home. Returns the instance id. Refuses an initialised home or database (Conflict)."""
    home = Home(settings.home)
    _check_init(settings, key_mode, owner_email, owner_password, master_password)
    email = check_email(owner_email)
    if not settings.uses_postgres:
        ensure_dir(home.root)
        if home.initialised():
            raise Conflict(
                f"{home.root} is already initialised", hint="Use another --home or remove it first."
            )
    instance_id = uuid.uuid4().hex
    store = Store(settings.sqlalchemy_url())
    ok = False
    try:
        with store.read() as s:
            existing = s.get(InstanceState, 1)
        if existing is not None:
            raise _already(existing)
        ca = keys.new_ca(instance_id)
        try:
            with store.write() as s:
                dek = keys.create_dek(home, s, instance_id, key_mode, master_password)
                cert, sealed = keys.sealed_ca(instance_id, dek, ca)
                s.add(
                    InstanceState(
                        instance_id=instance_id, key_mode=key_mode, ca_cert=cert, ca_key_sealed=sealed
                    )
                )
                owner = User(email=email, password_hash=hash_password(owner_password), role="owner")
                s.add(owner)
                vault = Vault(name="default")
                s.add(vault)
                s.flush()
                assert owner.id is not None and vault.id is not None
                s.add(Grant(vault_id=vault.id, subject_kind="user", subject_id=owner.id, role="admin"))
        except IntegrityError:  # another init won the race for the same database
            raise Conflict("the database already holds an agent-vault instance") from None
        if not settings.uses_postgres:
            info = {
                "instance_id": instance_id,
                "created_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
                "key_mode": key_mode,
                "schema_version": LATEST,
            }
            write_private(home.instance_file, json.dumps(info, indent=2))
        ok = True
    finally:
        store.close()
        if not ok and not settings.uses_postgres:
            _remove_partial(home)
    return instance_id


def _remove_partial(home: Home) -> None:
    """A failed init leaves nothing behind, so it can simply be run again."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(home.db_path) + suffix).unlink(missing_ok=True)
    home.dek_file.unlink(missing_ok=True)


def _legacy_row(home: Home, info: dict[str, object]) -> InstanceState:
    """The row for a home made before it existed: identity from instance.json, CA files as stored."""
    cert, sealed = keys.read_legacy_ca(home)
    try:
        created = datetime.strptime(str(info.get("created_at")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        created = utcnow()
    return InstanceState(
        instance_id=str(info["instance_id"]),
        key_mode=str(info["key_mode"]),
        created_at=created,
        ca_cert=cert,
        ca_key_sealed=sealed,
    )


def open_instance(settings: Settings) -> tuple[Store, InstanceState]:
    """The migrated store and the instance row (created from a legacy SQLite home's files if needed).

    Raises NotInitialised (SQLite: no instance.json; PostgreSQL: no row), InvalidRequest for a
    passwordless instance on PostgreSQL, DatabaseUnreadable for an unreachable PostgreSQL."""
    home = Home(settings.home)
    info = None if settings.uses_postgres else home.instance()  # before the DB file is created
    store = Store(settings.sqlalchemy_url())
    try:
        with store.read() as s:
            row = s.get(InstanceState, 1)
        if row is None:
            if info is None:
                raise NotInitialised(
                    "the PostgreSQL database holds no agent-vault instance",
                    hint="Run 'agent-vault init --database-url URL' once first.",
                )
            row = _legacy_row(home, info)
            with store.write() as s:
                s.add(row)
            shutil.rmtree(home.ca_dir, ignore_errors=True)  # copied (still sealed): the row is the CA now
        if settings.uses_postgres and row.key_mode == "passwordless":
            raise InvalidRequest(PG_PASSWORDLESS, hint="Switch it with 'agent-vault master-password set'.")
    except BaseException:
        store.close()
        raise
    return store, row


def identify(settings: Settings) -> Identity:
    """Instance id and key mode, read from the database (the home's instance.json for SQLite homes)."""
    store, row = open_instance(settings)
    store.close()
    return Identity(row.instance_id, row.key_mode)


def unlock(settings: Settings, master_password: str | None) -> Unlocked:
    """Open the store and recover the DEK and CA. Raises WrongMasterPassword / NotInitialised."""
    home = Home(settings.home)
    store, row = open_instance(settings)
    try:
        dek = keys.unwrap_dek(home, store, row.instance_id, row.key_mode, master_password)
        ca = keys.open_ca(row, dek)
    except BaseException:
        store.close()
        raise
    return Unlocked(store, row.instance_id, row.key_mode, dek, ca)


def owner_password_matches(store: Store, password: str) -> bool:
    """Whether `password` is some owner's login password (see `keys.owner_password_matches`)."""
    return keys.owner_password_matches(store, password)
