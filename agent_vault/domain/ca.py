"""CA rotation (SPEC §3.3, §4.3, §9 `POST /v1/ca/rotate`): owner, step-up.

A new CA replaces the old one in the instance row (certificate + key sealed under the DEK, one transaction),
`GET /v1/mitm/ca.pem` serves it at once, and new proxied TLS connections are signed by it without a
restart. Open connections keep the leaf certificate they have. Agents holding the old certificate must
fetch the new one (`vault run` does at every start). Audited as `ca.rotate` with both fingerprints
(public), never key material.
"""

from __future__ import annotations

import threading
from typing import Any

from agent_vault import keys
from agent_vault.core import Core
from agent_vault.domain.common import step_up
from agent_vault.domain.principal import Principal
from agent_vault.models import InstanceState

_rotating = threading.Lock()  # one rotation at a time: the files and the engine move together


def rotate_ca(core: Core, p: Principal, password: str | None) -> dict[str, Any]:
    """Replace the instance CA. Order keeps every failure harmless: the new CA is made and the engine's
    new certificate store built first (nothing changed yet), then the row is updated (one transaction,
    `keys.store_ca`), then the API and the engine switch together."""
    p.require_owner()
    step_up(core, p, password)
    with _rotating:
        old = core.ca
        new = keys.new_ca(core.instance_id)
        prepare = core.services.ca_engine
        install = prepare(new) if prepare is not None else None
        keys.store_ca(core.store, core.instance_id, core.dek, new)
        core.ca = new
        if install is not None:
            install()
    fingerprint, not_after = new.fingerprint_sha256, new.not_after
    core.record(
        "ca.rotate",
        p.actor,
        details={
            "fingerprint_sha256": fingerprint,
            "previous_fingerprint_sha256": old.fingerprint_sha256,
            "not_after": not_after,
        },
    )
    return {"fingerprint_sha256": fingerprint, "not_after": not_after}


def follow_stored_ca(core: Core) -> bool:
    """Replicas: adopt the CA another replica rotated (the instance row's certificate differs from ours).
    Blocking (a DB read): call it off the event loop. True if the CA changed here."""
    with core.store.read() as s:
        row = s.get(InstanceState, 1)
    if row is None or row.ca_cert.strip() == core.ca.cert_pem.strip():
        return False
    new = keys.open_ca(row, core.dek)
    with _rotating:
        prepare = core.services.ca_engine
        install = prepare(new) if prepare is not None else None
        core.ca = new
        if install is not None:
            install()
    return True
