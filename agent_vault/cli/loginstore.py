"""Where the CLI keeps its login (SPEC §4.4): the OS keyring when usable, else `cli/session.json` (0600).

With the keyring, the login sits in the entry service `agent-vault`, username
`session:<addr>|home:<home id>` (the home id: the first 16 hex digits of the SHA-256 of the home's
resolved path, so that CLIs of different homes logged in to the same server never share, overwrite or
log out each other's login); the entry's value is `{"email", "token"}` (JSON). `cli/session.json` keeps
only the pointer `{addr, email, expires_at, stored_in: "keyring"}` (no token) so that the CLI knows which
server it logged in to. An entry whose email is not the pointer's is not used (one note: log in again).
Without a keyring backend, or with `AGENT_VAULT_KEYRING=0`, the whole login (token included) goes into
the file. A keyring that is present but fails (locked, D-Bus error) falls back to the file with one
stderr note, never a traceback. `logout` removes the login from wherever it is.

Older versions keyed the entry by `session:<addr>` alone (shared by every home) and stored the bare
token. Such an entry is read once, when this home has no entry of its own: it is taken over (moved to
this home's entry) only if the server says that it is the login of the pointer's email; else it is
ignored, with a note.

Danger: the login token is a bearer credential: never printed, never in a note.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent_vault import oskeyring
from agent_vault.cli.output import out
from agent_vault.home import ensure_dir, write_private

KEYRING = "keyring"
_noted: set[str] = set()  # notes already printed by this process (a command may load the login twice)


def _note(text: str) -> None:
    if text not in _noted:
        _noted.add(text)
        out.warn(text)


def session_file(home: Path) -> Path:
    return home / "cli" / "session.json"


def home_id(home: Path) -> str:
    """A stable id of the home: its resolved path, hashed."""
    path = str(Path(home).expanduser().resolve())
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def keyring_user(home: Path, addr: str) -> str:
    """The keyring username of this home's login to `addr`."""
    return f"{_legacy_user(addr)}|home:{home_id(home)}"


def _legacy_user(addr: str) -> str:
    """The username older versions used for every home: `session:<addr>`."""
    return f"session:{addr.rstrip('/')}"


def _same_email(a: object, b: object) -> bool:
    return isinstance(a, str) and isinstance(b, str) and bool(a) and a.strip().lower() == b.strip().lower()


def _entry(value: str) -> tuple[str | None, str]:
    """(email, token) of an entry's value: JSON from this version, a bare token from older ones."""
    if value.startswith("{"):
        try:
            data = json.loads(value)
        except ValueError:
            return None, ""
        if isinstance(data, dict):
            email, token = data.get("email"), data.get("token")
            return (email if isinstance(email, str) else None), (token if isinstance(token, str) else "")
        return None, ""
    return None, value


def _login_email(addr: str, token: str) -> str | None:
    """The email of the user `token` logs in as, asked of the server it was issued by (`addr`, where the
    token was stored for); None when the server cannot say (unreachable, rejected, not a user token)."""
    import httpx

    try:
        with httpx.Client(timeout=5.0, trust_env=False) as c:
            r = c.get(f"{addr.rstrip('/')}/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        me = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(me, dict) or me.get("kind") != "user" or not isinstance(me.get("name"), str):
        return None
    return str(me["name"])


def _take_over_legacy(home: Path, addr: str, email: object) -> str | None:
    """The token of an older version's shared entry `session:<addr>`, moved to this home's entry, when
    it is the login of `email` (this home's pointer); None otherwise (it may be another home's login:
    left alone, with a note)."""
    value = oskeyring.get(_legacy_user(addr))
    if not value:
        return None
    _, token = _entry(value)
    if not token:
        return None
    owner = _login_email(addr, token)
    if owner is None or not _same_email(owner, email):
        if owner is not None:
            _note(
                f"note: the OS keyring's login to {addr} (from an older version, shared by every home) "
                f"is not {email}'s: not used; run 'agent-vault auth login'"
            )
        return None
    try:
        oskeyring.put(keyring_user(home, addr), json.dumps({"email": email, "token": token}))
    except oskeyring.KeyringUnavailable:
        return token  # used now, moved on a later run
    oskeyring.delete(_legacy_user(addr))
    return token


def _read(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(session_file(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_login(home: Path) -> dict[str, Any] | None:
    """The stored login ({addr, token, email, expires_at}); the token is absent if the keyring
    that holds it cannot be read now, or holds another user's login (one note says so)."""
    data = _read(home)
    if data is None or data.get("stored_in") != KEYRING:
        return data
    addr, email = str(data.get("addr", "")), data.get("email")
    without = {k: v for k, v in data.items() if k != "token"}
    try:
        value = oskeyring.get(keyring_user(home, addr))
        if value is None:
            token = _take_over_legacy(home, addr, email)
            return {**data, "token": token} if token else without
    except oskeyring.KeyringUnavailable as e:
        _note(f"note: the CLI login is in the OS keyring, which is unavailable ({e}); log in again")
        return without
    owner, token = _entry(value)
    if owner is not None and not _same_email(owner, email):
        _note(
            f"note: the OS keyring entry of this home's login to {addr} is {owner}'s, while "
            f"{session_file(home)} says {email}: not used; run 'agent-vault auth login'"
        )
        return without
    return {**data, "token": token} if token else without


def save_login(home: Path, data: dict[str, Any]) -> str:
    """Store a login; returns where: `keyring` or the file's path."""
    ensure_dir(home)
    ensure_dir(home / "cli")
    addr = str(data.get("addr", ""))
    try:
        entry = {"email": data.get("email"), "token": str(data["token"])}
        oskeyring.put(keyring_user(home, addr), json.dumps(entry))
    except oskeyring.KeyringUnavailable as e:
        if e.present:
            _note(f"note: the OS keyring failed ({e}); the login is kept in {session_file(home)} (0600)")
        write_private(session_file(home), json.dumps(data))
        return str(session_file(home))
    pointer = {k: v for k, v in data.items() if k != "token"}
    write_private(session_file(home), json.dumps({**pointer, "stored_in": KEYRING}))
    return KEYRING


def clear_login(home: Path) -> None:
    """Forget the login: this home's keyring entry (if any) and the file. An older version's shared
    entry is left alone: it may be another home's login."""
    data = _read(home)
    if data is not None and data.get("addr"):
        oskeyring.delete(keyring_user(home, str(data["addr"])))
    session_file(home).unlink(missing_ok=True)


def where(home: Path) -> str | None:
    """`keyring`, the file's path, or None when not logged in (for status and doctor)."""
    data = _read(home)
    if data is None:
        return None
    return KEYRING if data.get("stored_in") == KEYRING else str(session_file(home))


def check(home: Path) -> dict[str, str]:
    """The doctor line: which store holds the CLI login and which keyring backend is active."""
    try:
        backend = oskeyring.backend_name()
    except oskeyring.KeyringUnavailable as e:
        backend = None
        why = str(e)
    at = where(home)
    if at == KEYRING:
        if backend is None:
            return {
                "check": "login store",
                "status": "warn",
                "detail": f"OS keyring, now unavailable ({why})",
            }
        if oskeyring.plaintext(backend):
            return {
                "check": "login store",
                "status": "warn",
                "detail": f"OS keyring ({backend}): UNENCRYPTED on disk",
            }
        return {"check": "login store", "status": "ok", "detail": f"OS keyring ({backend})"}
    fallback = f"file {session_file(home)} (0600)"
    detail = f"{fallback}; keyring {backend} usable from the next login" if backend else f"{fallback}; {why}"
    if at is None:
        detail = (
            f"not logged in; a login would go to the OS keyring ({backend})"
            if backend
            else (f"not logged in; a login would go to {fallback} ({why})")
        )
    return {"check": "login store", "status": "ok", "detail": detail}
