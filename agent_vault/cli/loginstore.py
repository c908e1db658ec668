"""Where the CLI keeps its login (SPEC §4.4): the OS keyring when usable, else `cli/session.json` (0600).

With the keyring, the token sits in the entry service `agent-vault`, username `session:<addr>`, and
`cli/session.json` keeps only the pointer `{addr, email, expires_at, stored_in: "keyring"}` (no
token) so that the CLI knows which server it logged in to. Without a keyring backend, or with
`AGENT_VAULT_KEYRING=0`, the whole login (token included) goes into the file. A keyring that is
present but fails (locked, D-Bus error) falls back to the file with one stderr note, never a traceback.
`logout` removes the login from wherever it is.

Danger: the login token is a bearer credential: never printed, never in a note.
"""

from __future__ import annotations

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


def _user(addr: str) -> str:
    return f"session:{addr.rstrip('/')}"


def _read(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(session_file(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_login(home: Path) -> dict[str, Any] | None:
    """The stored login ({addr, token, email, expires_at}); the token is absent if the keyring
    that holds it cannot be read now (one note says so)."""
    data = _read(home)
    if data is None or data.get("stored_in") != KEYRING:
        return data
    try:
        token = oskeyring.get(_user(str(data.get("addr", ""))))
    except oskeyring.KeyringUnavailable as e:
        _note(f"note: the CLI login is in the OS keyring, which is unavailable ({e}); log in again")
        return {k: v for k, v in data.items() if k != "token"}
    return {**data, "token": token} if token else {k: v for k, v in data.items() if k != "token"}


def save_login(home: Path, data: dict[str, Any]) -> str:
    """Store a login; returns where: `keyring` or the file's path."""
    ensure_dir(home)
    ensure_dir(home / "cli")
    addr = str(data.get("addr", ""))
    try:
        oskeyring.put(_user(addr), str(data["token"]))
    except oskeyring.KeyringUnavailable as e:
        if e.present:
            _note(f"note: the OS keyring failed ({e}); the login is kept in {session_file(home)} (0600)")
        write_private(session_file(home), json.dumps(data))
        return str(session_file(home))
    pointer = {k: v for k, v in data.items() if k != "token"}
    write_private(session_file(home), json.dumps({**pointer, "stored_in": KEYRING}))
    return KEYRING


def clear_login(home: Path) -> None:
    """Forget the login: the keyring entry (if any) and the file."""
    data = _read(home)
    if data is not None and data.get("addr"):
        oskeyring.delete(_user(str(data["addr"])))
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
