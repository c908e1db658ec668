"""Creating (`init`) and opening (unlock at `server` start) an instance."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import select

from agent_vault import keys
from agent_vault.config import Settings
from agent_vault.domain.names import check_email
from agent_vault.errors import Conflict, InvalidRequest
from agent_vault.home import Home, ensure_dir, write_private
from agent_vault.models import Grant, User, Vault, utcnow
from agent_vault.passwords import hash_password, verify_password
from agent_vault.store import Store
from agent_vault.store.migrations import LATEST


@dataclass(frozen=True)
class Unlocked:
    store: Store
    instance_id: str
    key_mode: str
    dek: bytes
    ca: keys.CA

    def __repr__(self) -> str:
        return f"Unlocked(instance={self.instance_id}, key_mode={self.key_mode})"


def init_instance(
    settings: Settings,
    *,
    key_mode: str,
    owner_email: str,
    owner_password: str,
    master_password: str | None,
) -> str:
    """Create home, DB, DEK, CA, the owner and vault `default`. Returns the instance id.

    Refuses an already-initialised home (nothing is overwritten).
    """
    home = Home(settings.home)
    if key_mode not in keys.KEY_MODES:
        raise InvalidRequest(f"unknown key mode {key_mode!r}", hint="Use password, keyring or passwordless.")
    email = check_email(owner_email)
    if len(owner_password) < 8:
        raise InvalidRequest("the owner's login password must be at least 8 characters")
    if key_mode != "passwordless":
        if master_password is None:
            raise InvalidRequest("a master password is required", hint="Set AGENT_VAULT_MASTER_PASSWORD.")
        keys.check_master_password(master_password)
        if master_password == owner_password:
            raise InvalidRequest("the master password must differ from the owner's login password")
    ensure_dir(home.root)
    if home.initialised():
        raise Conflict(f"{home.root} is already initialised", hint="Use another --home or remove it first.")
    instance_id = uuid.uuid4().hex
    store = Store(settings.sqlalchemy_url())
    ok = False
    try:
        dek = keys.create_dek(home, store, instance_id, key_mode, master_password)
        keys.create_ca(home, instance_id, dek)
        with store.write() as s:
            owner = User(email=email, password_hash=hash_password(owner_password), role="owner")
            s.add(owner)
            vault = Vault(name="default")
            s.add(vault)
            s.flush()
            assert owner.id is not None and vault.id is not None
            s.add(Grant(vault_id=vault.id, subject_kind="user", subject_id=owner.id, role="admin"))
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
        if not ok:
            _remove_partial(home)
    return instance_id


def _remove_partial(home: Home) -> None:
    """A failed init leaves nothing behind, so it can simply be run again."""
    import shutil

    for suffix in ("", "-wal", "-shm"):
        Path(str(home.db_path) + suffix).unlink(missing_ok=True)
    home.dek_file.unlink(missing_ok=True)
    shutil.rmtree(home.ca_dir, ignore_errors=True)


def unlock(settings: Settings, master_password: str | None) -> Unlocked:
    """Open the store and recover the DEK and CA. Raises WrongMasterPassword / NotInitialised."""
    home = Home(settings.home)
    info = home.instance()
    store = Store(settings.sqlalchemy_url())
    try:
        dek = keys.unwrap_dek(home, store, info["instance_id"], info["key_mode"], master_password)
        ca = keys.load_ca(home, info["instance_id"], dek)
    except BaseException:
        store.close()
        raise
    return Unlocked(store, info["instance_id"], info["key_mode"], dek, ca)


def owner_password_matches(store: Store, password: str) -> bool:
    with store.read() as s:
        owners = list(s.exec(select(User).where(User.role == "owner")))
    return any(verify_password(o.password_hash, password) for o in owners)
