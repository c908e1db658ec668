"""Credential values the proxy itself rotates: a refresh token that an OAuth2 token endpoint
replaced (issue #16). Sealed like any value (`credentials.write_value`), audited as
`credential.rotate` by the service, never with the value.

Blocking (SQLite write, runtime reload): call it off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

from sqlmodel import select

from agent_vault.core import Core
from agent_vault.domain.common import get_vault
from agent_vault.domain.credentials import check_value, no_credential, write_value
from agent_vault.models import Credential


def store_rotated(core: Core, vault: str, key: str, value: str, *, service: str) -> int:
    """Replace the value of an existing credential `key` of `vault`; returns its new version."""
    check_value(value)
    with core.store.write() as s:
        v = get_vault(s, vault)
        c = s.exec(select(Credential).where(Credential.vault_id == v.id, Credential.key == key)).first()
        if c is None:
            raise no_credential(key, vault)
        write_value(c, value, core.dek)
        c.updated_by = f"service:{service}"
        s.add(c)
        version = c.version
    core.runtime.reload()
    core.record(
        "credential.rotate",
        f"service:{service}",
        vault=vault,
        target=key,
        details={"version": version, "by": "oauth2-refresh-token"},
    )
    return version
