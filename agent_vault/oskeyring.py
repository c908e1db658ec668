"""The OS keyring (python `keyring`), service `agent-vault` (SPEC §4.2, §4.4): one place that talks to it.

Entries: `master-password:<instance_id>` (key mode `keyring`, server side) and
`session:<addr>|home:<home id>` (the CLI login of one home, see cli/loginstore.py; older versions used
`session:<addr>`). `AGENT_VAULT_KEYRING=0` turns the keyring off; `PYTHON_KEYRING_BACKEND` picks a backend
(keyring's own variable). A keyring that is present but fails (locked, no backend, D-Bus errors) is
reported as `KeyringUnavailable` with a short reason: callers fall back (to the password sources, to
the 0600 file) and print one note. Danger: values read here are secrets; reasons never include them.
"""

from __future__ import annotations

import os

SERVICE = "agent-vault"


class KeyringUnavailable(Exception):
    """No usable keyring (disabled, no backend, locked, backend error). `str()` is a short reason;
    `present` is True when a backend exists but failed (worth a note), False when there is none."""

    def __init__(self, reason: str, *, present: bool = True) -> None:
        super().__init__(reason)
        self.present = present


def enabled() -> bool:
    return os.environ.get("AGENT_VAULT_KEYRING", "1").strip().lower() not in ("0", "false", "no", "off")


def _keyring() -> object:
    if not enabled():
        raise KeyringUnavailable("disabled by AGENT_VAULT_KEYRING=0", present=False)
    try:
        import keyring
        from keyring.backends import fail, null

        backend = keyring.get_keyring()
    except Exception as e:  # a broken backend configuration is "no keyring", never fatal
        raise KeyringUnavailable(f"the keyring backend cannot load ({type(e).__name__})") from None
    if isinstance(backend, fail.Keyring | null.Keyring):  # null: accepts writes, keeps nothing
        raise KeyringUnavailable("no keyring backend is available", present=False)
    return backend


def backend_name() -> str:
    """The active backend's class name (doctor); raises KeyringUnavailable."""
    b = _keyring()
    return f"{type(b).__module__}.{type(b).__name__}"


def plaintext(backend: str) -> bool:
    """Whether a backend (its `backend_name`) keeps secrets unencrypted on disk (keyrings.alt's
    PlaintextKeyring: base64 in a file, a development tool), so a secret in it is as exposed as a file."""
    return "plaintext" in backend.lower()


def get(username: str) -> str | None:
    """The stored secret or None if there is no entry; KeyringUnavailable if the keyring fails."""
    b = _keyring()
    try:
        value = b.get_password(SERVICE, username)  # type: ignore[attr-defined]
    except Exception as e:  # locked, D-Bus gone, corrupt store: the caller falls back
        raise KeyringUnavailable(f"the keyring failed ({type(e).__name__})") from None
    return value if isinstance(value, str) else None


def put(username: str, secret: str) -> None:
    """Store (replace) a secret and read it back; KeyringUnavailable if the keyring fails or does not
    keep it (a backend that swallows writes must not lose a login)."""
    b = _keyring()
    try:
        b.set_password(SERVICE, username, secret)  # type: ignore[attr-defined]
        kept = b.get_password(SERVICE, username)  # type: ignore[attr-defined]
    except Exception as e:  # see get()
        raise KeyringUnavailable(f"the keyring failed ({type(e).__name__})") from None
    if kept != secret:
        raise KeyringUnavailable("the keyring did not keep the entry")


def delete(username: str) -> bool:
    """Remove an entry; True if one was removed. Never raises (absent or failing -> False)."""
    try:
        b = _keyring()
        if b.get_password(SERVICE, username) is None:  # type: ignore[attr-defined]
            return False
        b.delete_password(SERVICE, username)  # type: ignore[attr-defined]
    except Exception:  # nothing to remove, or the keyring fails: the file fallback is cleaned anyway
        return False
    return True
