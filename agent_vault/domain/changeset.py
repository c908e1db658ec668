"""A proposal's change set: parse and validate it, check it against a vault, describe and apply it.

Pure of HTTP and of the proposal lifecycle (see `proposals.py`). Danger: `apply` receives credential
values in clear; it seals them into rows inside the caller's transaction and keeps no other copy.
Agents never supply values: any `value` field in a proposal is refused (`value_not_allowed`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, col, select

from agent_vault import validation
from agent_vault.domain.credentials import check_value, write_value
from agent_vault.domain.services import delete_in_tx, parse_service, public, upsert_in_tx
from agent_vault.errors import InvalidRequest, UnknownCredential, ValueNotAllowed
from agent_vault.models import Credential, Service, Vault
from agent_vault.servicedef import CredentialKey, ServiceDef, validate_name

MAX_ENTRIES = 10
_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class CredentialEntry(_In):
    action: Literal["set", "delete"] = "set"
    key: CredentialKey
    description: str = Field(default="", max_length=500)
    obtain: str = Field(default="", max_length=500)


class ProposalIn(_In):
    services: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_ENTRIES)
    credentials: list[CredentialEntry] = Field(default_factory=list, max_length=MAX_ENTRIES)
    message: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class ChangeSet:
    """A validated proposal: service sets (definitions), service deletes (names), credential entries."""

    sets: list[ServiceDef]
    deletes: list[str]
    creds: list[CredentialEntry]
    message: str = ""

    @property
    def cred_sets(self) -> list[str]:
        return [c.key for c in self.creds if c.action == "set"]

    @property
    def cred_deletes(self) -> list[str]:
        return [c.key for c in self.creds if c.action == "delete"]

    @property
    def needed_role(self) -> str:
        """§3.3: approving needs the role applying each change directly would need."""
        return "admin" if self.sets or self.deletes else "member"

    def value_keys(self) -> set[str]:
        """Keys the approver may (or must) give a value for."""
        refs = {k for svc in self.sets for k in svc.all_referenced_keys}
        return (set(self.cred_sets) | refs) - set(self.cred_deletes)

    def services_json(self) -> str:
        out = [{"action": "set", **public(s)} for s in self.sets] + [
            {"action": "delete", "name": n} for n in self.deletes
        ]
        return json.dumps(out)

    def credentials_json(self) -> str:
        return json.dumps([c.model_dump() for c in self.creds])

    def summary(self) -> dict[str, list[str]]:
        """Names and keys only (audit details, lists)."""
        return {
            "services": [s.name for s in self.sets],
            "deleted_services": self.deletes,
            "credentials": self.cred_sets,
            "deleted_credentials": self.cred_deletes,
        }


def _fields(e: ValidationError) -> list[dict[str, str]]:
    return validation.fields(e.errors())


def has_value_field(obj: Any) -> bool:
    """True if any mapping at any depth has a `value` key (agents never send values)."""
    if isinstance(obj, dict):
        return "value" in obj or any(has_value_field(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_value_field(v) for v in obj)
    return False


def parse(data: Any) -> ChangeSet:
    """Validate a proposal body (SPEC §8). Errors name fields and keys, never echo input."""
    if has_value_field(data):
        raise ValueNotAllowed("proposals cannot contain credential values")
    try:
        body = ProposalIn.model_validate(data)
    except ValidationError as e:
        fields = _fields(e)
        raise InvalidRequest(
            f"invalid proposal: {fields[0]['loc']}: {fields[0]['msg']}", fields=fields
        ) from None
    sets: list[ServiceDef] = []
    deletes: list[str] = []
    for i, entry in enumerate(body.services):
        rest = dict(entry)
        action = rest.pop("action", "set")
        if action == "set":
            sets.append(parse_service(rest))
        elif action == "delete":
            try:
                deletes.append(validate_name(str(rest.get("name", ""))))
            except ValueError as e:
                raise InvalidRequest(f"invalid proposal: services.{i}.name: {e}") from None
        else:
            raise InvalidRequest(f"invalid proposal: services.{i}.action must be set or delete")
    names = [s.name for s in sets] + deletes
    if len(set(names)) != len(names):
        raise InvalidRequest("a service is named twice in the proposal")
    keys = [c.key for c in body.credentials]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("a credential key is named twice in the proposal")
    if not names and not keys:
        raise InvalidRequest("the proposal changes nothing", hint="Name at least one service or credential.")
    return ChangeSet(sets, deletes, list(body.credentials), body.message)


def load(services_json: str, credentials_json: str, message: str = "") -> ChangeSet:
    """Rebuild a change set from the JSON stored on a proposal row."""
    svcs = json.loads(services_json)
    sets = [
        parse_service({k: v for k, v in d.items() if k != "action"}) for d in svcs if d["action"] == "set"
    ]
    deletes = [str(d["name"]) for d in svcs if d["action"] == "delete"]
    creds = [CredentialEntry.model_validate(c) for c in json.loads(credentials_json)]
    return ChangeSet(sets, deletes, creds, message)


@dataclass(frozen=True)
class State:
    """The vault as stored: service definitions by name, credential rows by key."""

    services: dict[str, ServiceDef]
    creds: dict[str, Credential]

    @property
    def with_value(self) -> set[str]:
        return {k for k, c in self.creds.items() if c.ciphertext is not None or c.source_kind is not None}


def vault_state(s: Session, v: Vault) -> State:
    rows = s.exec(select(Service).where(Service.vault_id == v.id).order_by(col(Service.position)))
    creds = s.exec(select(Credential).where(Credential.vault_id == v.id))
    return State(
        {r.name: ServiceDef.model_validate(json.loads(r.definition)) for r in rows}, {c.key: c for c in creds}
    )


def check_refs(pp: ChangeSet, st: State) -> None:
    """Cross-checks against the vault: referenced keys exist, slots are used, deletes make sense."""
    for name in pp.deletes:
        if name not in st.services:
            raise InvalidRequest(f"service {name} does not exist, so it cannot be deleted")
    for key in pp.cred_deletes:
        if key not in st.creds:
            raise InvalidRequest(f"credential {key} does not exist, so it cannot be deleted")
    known = (set(st.creds) | set(pp.cred_sets)) - set(pp.cred_deletes)
    for svc in pp.sets:
        unknown = [k for k in svc.all_referenced_keys if k not in known]
        if unknown:
            raise UnknownCredential(
                f"service {svc.name} references unknown credentials: {', '.join(unknown)}", keys=unknown
            )
    remaining = {n: d for n, d in st.services.items() if n not in pp.deletes} | {d.name: d for d in pp.sets}
    used = {k for d in remaining.values() for k in d.all_referenced_keys}
    for key in pp.cred_deletes:
        if key in used:
            raise InvalidRequest(f"credential {key} would still be used by a service")
    if pp.sets or pp.deletes:
        unused = [k for k in pp.cred_sets if k not in used]
        if unused:
            raise InvalidRequest(
                f"credential slots not referenced by any service: {', '.join(unused)}",
                hint="Reference them from a proposed service, or propose credentials alone.",
            )


def missing(pp: ChangeSet, st: State) -> list[str]:
    return sorted(pp.value_keys() - st.with_value)


def describe(pp: ChangeSet, st: State) -> dict[str, Any]:
    """What approving would change, against the current state (for the UI and `proposal show`)."""
    svc = [
        {
            "name": d.name,
            "effect": "update" if d.name in st.services else "add",
            "before": public(st.services[d.name]) if d.name in st.services else None,
            "warnings": warnings(d),
        }
        for d in pp.sets
    ]
    svc += [
        {"name": n, "effect": "delete", "before": public(st.services[n]) if n in st.services else None}
        for n in pp.deletes
    ]
    cred = [
        {
            "key": c.key,
            "effect": "delete" if c.action == "delete" else "update" if c.key in st.creds else "create",
            "has_value": c.key in st.with_value,
        }
        for c in pp.creds
    ]
    return {"services": svc, "credentials": cred}


def warnings(d: ServiceDef) -> list[str]:
    """What an approver should look at twice in a proposed service (names only, never values)."""
    out = []
    if d.allow_http and d.sends_credentials:
        out.append("allow_http: its credentials would also be sent over unencrypted http://")
    if d.sends_credentials and d.redact_response is False:
        out.append("redact_response: false: an upstream echoing a credential shows it to the agent")
    return out


def check_values(values: dict[str, str]) -> None:
    """Approver-supplied values: valid key names, non-empty. Messages never contain a value."""
    for key, value in values.items():
        if not _KEY_RE.fullmatch(key):
            raise InvalidRequest("a credential key in the approval is not a valid key name")
        if not value:
            raise InvalidRequest(f"the value for {key} is empty", hint="Provide a non-empty value.")
        check_value(value)


def apply(
    s: Session, v: Vault, pp: ChangeSet, st: State, values: dict[str, str], dek: bytes, actor: str
) -> None:
    """Write the change set inside the caller's transaction: credential slots and sealed values first,
    then services by name (new ones appended), so a failure anywhere leaves nothing applied."""
    assert v.id is not None
    rows = dict(st.creds)
    for c in pp.creds:
        if c.action == "delete":
            s.delete(rows.pop(c.key))
            continue
        row = rows.setdefault(c.key, Credential(vault_id=v.id, key=c.key))
        row.description = c.description or row.description
        row.updated_by = actor
        s.add(row)
    for key, value in values.items():
        row = rows.setdefault(key, Credential(vault_id=v.id, key=key))
        write_value(row, value, dek)
        row.updated_by = actor
        s.add(row)
    for name in pp.deletes:
        delete_in_tx(s, v, name)
    for svc in pp.sets:
        upsert_in_tx(s, v, svc)
