"""init/unlock: key modes, wrong master password, nothing half-written, private files."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from agent_vault import keys
from agent_vault.config import Settings
from agent_vault.errors import AgentVaultError, Conflict, InvalidRequest, NotInitialised, WrongMasterPassword
from agent_vault.home import Home
from agent_vault.instance import init_instance, unlock
from agent_vault.store import Store

MASTER = "master-password-123456"


def _init(home: Path, mode: str = "password", master: str | None = MASTER) -> Settings:
    s = Settings(home=home)
    init_instance(
        s,
        key_mode=mode,
        owner_email="Owner@Example.com",
        owner_password="owner-pass-1",
        master_password=master,
    )
    return s


def test_password_mode_unlocks_only_with_the_right_password(tmp_path: Path) -> None:
    s = _init(tmp_path / "h")
    u = unlock(s, MASTER)
    assert len(u.dek) == 32 and b"PRIVATE KEY" in u.ca.key_pem
    assert "PRIVATE" not in repr(u.ca) and repr(u.dek) not in repr(u)
    u.store.close()
    with pytest.raises(WrongMasterPassword) as e:
        unlock(s, "not-the-password-at-all")
    assert "wrong master password" in e.value.message


def test_home_and_secret_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "h"
    _init(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for f in ("agent-vault.db", "instance.json"):
        assert stat.S_IMODE((home / f).stat().st_mode) == 0o600, f
    assert not (home / "dek.key").exists() and not (home / "ca").exists()  # the CA lives in the database
    with sqlite3.connect(home / "agent-vault.db") as conn:
        cert, sealed = conn.execute("SELECT ca_cert, ca_key_sealed FROM instance_state").fetchone()
    assert b"BEGIN CERTIFICATE" in cert and b"PRIVATE KEY" not in sealed


def test_a_home_from_before_the_instance_row_is_moved_into_it(tmp_path: Path) -> None:
    """Older versions kept the CA in ca/ (key sealed) and the identity in instance.json only: the
    first unlock copies them, still sealed, into the row; the CA and the credentials stay the same."""
    s = _init(tmp_path / "h")
    u = unlock(s, MASTER)
    ca, instance_id = u.ca, u.instance_id
    u.store.close()
    ca_dir = tmp_path / "h" / "ca"
    ca_dir.mkdir(mode=0o700)
    with sqlite3.connect(tmp_path / "h" / "agent-vault.db") as conn:
        cert, sealed = conn.execute("SELECT ca_cert, ca_key_sealed FROM instance_state").fetchone()
        conn.execute("DELETE FROM instance_state")
    (ca_dir / "ca-cert.pem").write_bytes(cert)
    (ca_dir / "ca-key.enc").write_bytes(sealed)
    again = unlock(s, MASTER)
    again.store.close()
    assert (again.instance_id, again.ca) == (instance_id, ca)
    assert again.ca.key_pem == ca.key_pem and not ca_dir.exists()
    with sqlite3.connect(tmp_path / "h" / "agent-vault.db") as conn:
        assert conn.execute("SELECT instance_id, key_mode FROM instance_state").fetchall() == [
            (instance_id, "password")
        ]


def test_passwordless_mode_keeps_dek_in_a_private_file(tmp_path: Path) -> None:
    home = tmp_path / "h"
    s = _init(home, "passwordless", None)
    assert stat.S_IMODE((home / "dek.key").stat().st_mode) == 0o600
    unlock(s, None).store.close()


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"master_password": "short"}, InvalidRequest),
        ({"master_password": None}, InvalidRequest),
        ({"master_password": "owner-pass-1"}, InvalidRequest),  # must differ from the login password
        ({"key_mode": "bogus"}, InvalidRequest),
        ({"owner_email": "not-an-email"}, InvalidRequest),
        ({"owner_password": "short"}, InvalidRequest),
    ],
)
def test_bad_init_input_changes_nothing(
    tmp_path: Path, kwargs: dict[str, object], err: type[Exception]
) -> None:
    home = tmp_path / "h"
    args: dict[str, object] = {
        "key_mode": "password",
        "owner_email": "o@example.com",
        "owner_password": "owner-pass-1",
        "master_password": MASTER,
        **kwargs,
    }
    with pytest.raises(err):
        init_instance(Settings(home=home), **args)  # type: ignore[arg-type]
    assert not (home / "instance.json").exists()
    assert not (home / "agent-vault.db").exists()


def test_init_twice_is_refused_and_keeps_the_instance(tmp_path: Path) -> None:
    s = _init(tmp_path / "h")
    before = (tmp_path / "h" / "instance.json").read_text()
    with pytest.raises(Conflict):
        _init(tmp_path / "h")
    assert (tmp_path / "h" / "instance.json").read_text() == before
    unlock(s, MASTER).store.close()


def test_uninitialised_and_unreadable_home(tmp_path: Path) -> None:
    with pytest.raises(NotInitialised):
        unlock(Settings(home=tmp_path / "nothing"), MASTER)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AgentVaultError):
        _init(blocker / "h")


def test_database_url_scheme_is_checked_and_never_echoed(tmp_path: Path) -> None:
    assert Settings(home=tmp_path, database_url="postgresql://x/y").sqlalchemy_url() == "postgresql://x/y"
    with pytest.raises(InvalidRequest, match="must be sqlite:///PATH or postgresql://") as info:
        Settings(home=tmp_path, database_url="mysql://u:hunter2-secret@h/db").sqlalchemy_url()
    assert "hunter2" not in str(info.value) + info.value.hint
    assert "hunter2" not in repr(Settings(home=tmp_path, database_url="postgresql://u:hunter2@h/db"))


def test_a_postgres_instance_lives_in_the_database_alone(pg: Any, tmp_path: Path) -> None:
    """init writes nothing local; any home unlocks it; a second init is refused; the master password
    changes in the database; passwordless is refused (its key file would be local to one host)."""
    url = pg.new_database()
    first = _init_pg(tmp_path / "a", url)
    assert not (tmp_path / "a").exists()
    with pytest.raises(Conflict, match="already holds agent-vault instance"):
        _init_pg(tmp_path / "b", url)
    other = Settings(home=tmp_path / "c", database_url=url)
    u = unlock(other, MASTER)
    u.store.close()
    assert u.instance_id == first and u.key_mode == "password" and b"PRIVATE KEY" in u.ca.key_pem
    with pytest.raises(WrongMasterPassword):
        unlock(other, "not-the-password-at-all")
    store = Store(url)
    try:
        with pytest.raises(InvalidRequest, match="passwordless mode is not available"):
            keys.change_key_mode(Home(tmp_path / "c"), store, first, "password", MASTER, "passwordless", None)
        keys.change_key_mode(
            Home(tmp_path / "c"), store, first, "password", MASTER, "password", "a-new-master-pw-99"
        )
    finally:
        store.close()
    again = unlock(other, "a-new-master-pw-99")
    assert again.ca == u.ca and again.dek == u.dek
    rotated = keys.new_ca(first)  # CA rotation replaces the row's CA for every replica's next start
    keys.store_ca(again.store, first, again.dek, rotated)
    again.store.close()
    after = unlock(Settings(home=tmp_path / "e", database_url=url), "a-new-master-pw-99")
    after.store.close()
    assert after.ca == rotated != u.ca
    with pytest.raises(InvalidRequest, match="passwordless mode is not available"):
        _init_pg(tmp_path / "d", pg.new_database(), mode="passwordless")


def _init_pg(home: Path, url: str, mode: str = "password") -> str:
    return init_instance(
        Settings(home=home, database_url=url),
        key_mode=mode,
        owner_email="owner@example.com",
        owner_password="owner-pass-1",
        master_password=MASTER if mode != "passwordless" else None,
    )
