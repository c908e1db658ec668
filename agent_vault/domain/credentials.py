"""Credential values: write-only for members, reveal for admins after step-up (SPEC §3.3, §4.3).

Also dynamic sources (issue #16): a command or a file the proxy asks for the value. Setting one is
an owner-only step-up action (the command runs, or the file is read, as the server's user), and
the spec is sealed under the DEK (a command line may embed a secret).

Danger: values pass through here in clear. They are sealed before any row is written and are
never put into messages, audit details or return values (except `reveal`).
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from sqlmodel import select

from agent_vault import credsource, crypto
from agent_vault.core import Core
from agent_vault.domain.common import get_vault, iso, step_up
from agent_vault.domain.names import check_key
from agent_vault.domain.principal import Principal
from agent_vault.errors import CredentialCorrupt, InUse, InvalidRequest, NotFound
from agent_vault.models import Credential, utcnow


def check_value(value: str) -> str:
    if not value:
        raise InvalidRequest("the credential value is empty", hint="Provide a non-empty value.")
    if len(value) > 64 * 1024:
        raise InvalidRequest("the credential value is larger than 64 KiB")
    return value


def _used_by(core: Core, vault: str, key: str) -> list[str]:
    view = core.runtime.snapshot.vaults.get(vault)
    if view is None:
        return []
    return [svc.name for svc in view.services if key in svc.all_referenced_keys]


def list_credentials(core: Core, p: Principal, vault: str) -> dict[str, Any]:
    p.require(vault, "proxy")
    with core.store.read() as s:
        v = get_vault(s, vault)
        rows = list(s.exec(select(Credential).where(Credential.vault_id == v.id).order_by(Credential.key)))
    view = core.runtime.snapshot.vaults.get(vault)
    specs = view.sources if view is not None else {}
    owner = p.kind == "user" and p.is_owner
    out = []
    for c in rows:
        item: dict[str, Any] = {
            "key": c.key,
            "description": c.description,
            "has_value": c.ciphertext is not None or c.source_kind is not None,
            "source": c.source_kind or "static",
            "ttl": c.source_ttl,
            "version": c.version,
            "updated_at": iso(c.updated_at),
            "updated_by": c.updated_by,
            "used_by": _used_by(core, vault, c.key),
        }
        spec = specs.get(c.key)
        if owner and spec is not None:  # the command line is config an owner may read; nobody else
            item["source_detail"] = spec.public(owner=True)
        out.append(item)
    return {"credentials": out}


def no_credential(key: str, vault: str) -> NotFound:
    """The 404 for a credential key the vault does not hold."""
    return NotFound(
        f"credential {key} not found in vault {vault}",
        hint="List them with 'agent-vault vault credential list'.",
    )


def set_credential(
    core: Core,
    p: Principal,
    vault: str,
    key: str,
    value: str,
    description: str | None = None,
    *,
    must_exist: bool = False,
) -> dict[str, Any]:
    """Create or replace (or, with must_exist, rotate) a value. Needs member on the vault."""
    p.require(vault, "member")
    check_key(key)
    check_value(value)
    if description is not None and len(description) > 500:
        raise InvalidRequest("description is longer than 500 characters")
    with core.store.write() as s:
        v = get_vault(s, vault)
        assert v.id is not None
        c = s.exec(select(Credential).where(Credential.vault_id == v.id, Credential.key == key)).first()
        if c is None:
            if must_exist:
                raise no_credential(key, vault)
            c = Credential(vault_id=v.id, key=key)
        existed = c.ciphertext is not None
        write_value(c, value, core.dek)
        if description is not None:
            c.description = description
        c.updated_by = p.actor
        s.add(c)
    core.runtime.reload()
    core.record(
        "credential.rotate" if existed else "credential.set",
        p.actor,
        vault=vault,
        target=key,
        details={"version": c.version},
    )
    return {"key": key, "version": c.version}


def write_value(c: Credential, value: str, dek: bytes) -> None:
    """Seal `value` into row `c` (AAD binds vault id, key and key version) and bump its version.
    A stored value replaces any dynamic source."""
    c.ciphertext = crypto.seal(dek, value.encode(), crypto.credential_aad(c.vault_id, c.key, c.key_version))
    c.source_kind = c.source = c.source_ttl = None
    c.version += 1
    c.updated_at = utcnow()


def set_source(
    core: Core,
    p: Principal,
    vault: str,
    key: str,
    source: dict[str, Any],
    password: str | None,
    description: str | None = None,
) -> dict[str, Any]:
    """Make KEY dynamic: its value comes from a command or a file, resolved by the proxy and kept
    in memory only. Owner + step-up: the server runs the command / reads the file as its own user."""
    p.require(vault, "member", human=True)
    p.require_owner()
    check_key(key)
    spec = credsource.make_spec(source)
    if description is not None and len(description) > 500:
        raise InvalidRequest("description is longer than 500 characters")
    step_up(core, p, password)
    warnings = source_warnings(spec, key)  # after step-up: only a confirmed owner learns about paths
    with core.store.write() as s:
        v = get_vault(s, vault)
        assert v.id is not None
        c = s.exec(select(Credential).where(Credential.vault_id == v.id, Credential.key == key)).first()
        if c is None:
            c = Credential(vault_id=v.id, key=key)
        c.ciphertext = None
        c.source_kind, c.source_ttl = spec.kind, spec.ttl
        c.source = credsource.seal_spec(core.dek, spec, v.id, key, c.key_version)
        c.version += 1
        c.updated_at = utcnow()
        c.updated_by = p.actor
        if description is not None:
            c.description = description
        s.add(c)
    core.runtime.reload()
    core.record(
        "credential.source",
        p.actor,
        vault=vault,
        target=key,
        details={"version": c.version, "source": spec.kind, "ttl": spec.ttl},
    )
    out: dict[str, Any] = {"key": key, "version": c.version, "source": spec.kind, "ttl": spec.ttl}
    if warnings:
        out["warnings"] = warnings
    return out


def source_warnings(spec: credsource.SourceSpec, key: str) -> list[str]:
    """Check a source where the server will use it (its user, its PATH) before storing it.

    A path that exists but is not a regular file (a directory, a device, a pipe) is refused: it can
    never serve a value. What may change later is accepted with a warning: a file that does not exist
    yet, one the server cannot read now, a program not on the server's PATH. A shell command is not
    checked (only the shell knows what it runs). Messages name the path or program, never the command."""
    fails = f"requests that need {key} fail (credential_unavailable) until it"
    if spec.kind == "file":
        assert spec.path is not None
        try:
            st = os.stat(spec.path)
        except FileNotFoundError:
            return [f"{spec.path} does not exist yet; {fails} does"]
        except OSError:
            return [f"{spec.path} cannot be checked by the server's user; {fails} can be read"]
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(
                f"{spec.path} is not a regular file",
                hint="A file source reads a regular file (not a directory, device or pipe).",
            )
        if not os.access(spec.path, os.R_OK):
            return [f"{spec.path} is not readable by the server's user; {fails} is"]
        return []
    if spec.shell:
        return []
    program = spec.argv()[0]
    if "/" in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            return [f"program {program} is not an executable file; {fails} is"]
    elif shutil.which(program) is None:
        return [f"program {program} was not found on the server's PATH; {fails} is (or give its full path)"]
    return []


def delete_credential(core: Core, p: Principal, vault: str, key: str, force: bool = False) -> None:
    p.require(vault, "member")
    used = _used_by(core, vault, key)
    if used and not force:
        raise InUse(f"credential {key} is used by services: {', '.join(used)}")
    with core.store.write() as s:
        v = get_vault(s, vault)
        c = s.exec(select(Credential).where(Credential.vault_id == v.id, Credential.key == key)).first()
        if c is None:
            raise no_credential(key, vault)
        s.delete(c)
    core.runtime.reload()
    core.record("credential.delete", p.actor, vault=vault, target=key)


def reveal(core: Core, p: Principal, vault: str, key: str, password: str | None) -> dict[str, Any]:
    p.require(vault, "admin", human=True)
    step_up(core, p, password)
    with core.store.read() as s:
        v = get_vault(s, vault)
        c = s.exec(select(Credential).where(Credential.vault_id == v.id, Credential.key == key)).first()
    if c is not None and c.source_kind is not None:
        raise InvalidRequest(
            f"credential {key} comes from a {c.source_kind} source; its value is never stored",
            hint="Run the command or read the file yourself.",
        )
    if c is None or c.ciphertext is None:
        raise no_credential(key, vault)
    try:
        value = crypto.open_sealed(
            core.dek, c.ciphertext, crypto.credential_aad(c.vault_id, c.key, c.key_version)
        )
    except crypto.DecryptionError:
        raise CredentialCorrupt(vault, key) from None
    core.record("credential.reveal", p.actor, vault=vault, target=key)
    return {"key": key, "value": value.decode()}
