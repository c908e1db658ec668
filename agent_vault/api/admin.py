"""Admin routes: vaults, credentials, services, grants (SPEC §9)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from agent_vault.api.deps import CoreDep, PrincipalDep
from agent_vault.domain import credentials, services, vaults
from agent_vault.errors import InvalidRequest
from agent_vault.schemas import (
    CredentialPut,
    CredentialRotate,
    GrantIn,
    ServiceEnable,
    ServiceIn,
    ServicesReplace,
    StepUp,
    VaultCreate,
    VaultUpdate,
)

router = APIRouter(prefix="/v1/vaults")
J = dict[str, Any]


def _pw(body: StepUp | None) -> str | None:
    return body.pw() if body else None


@router.get("")
def list_vaults(core: CoreDep, p: PrincipalDep) -> J:
    return vaults.list_vaults(core, p)


@router.post("", status_code=201)
def create_vault(body: VaultCreate, core: CoreDep, p: PrincipalDep) -> J:
    return vaults.create_vault(core, p, body.name)


@router.get("/{v}")
def get_vault(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return vaults.get_vault_info(core, p, v)


@router.patch("/{v}")
def update_vault(v: str, body: VaultUpdate, core: CoreDep, p: PrincipalDep) -> J:
    return vaults.update_vault(
        core,
        p,
        v,
        body.pw(),
        new_name=body.name,
        unmatched_policy=body.unmatched_policy,
        enforcement=body.enforcement,
        rate_limits=body.rate_limits,
    )


@router.delete("/{v}", status_code=204)
def delete_vault(v: str, body: StepUp | None = None, *, core: CoreDep, p: PrincipalDep) -> Response:
    vaults.delete_vault(core, p, v, _pw(body))
    return Response(status_code=204)


@router.get("/{v}/credentials")
def list_credentials(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return credentials.list_credentials(core, p, v)


@router.put("/{v}/credentials/{key}")
def put_credential(v: str, key: str, body: CredentialPut, core: CoreDep, p: PrincipalDep) -> J:
    if (body.value is None) == (body.source is None):
        raise InvalidRequest("give exactly one of value and source")
    if body.source is not None:
        return credentials.set_source(core, p, v, key, body.source.spec_input(), body.pw(), body.description)
    assert body.value is not None
    return credentials.set_credential(core, p, v, key, body.value.get_secret_value(), body.description)


@router.post("/{v}/credentials/{key}/rotate")
def rotate_credential(v: str, key: str, body: CredentialRotate, core: CoreDep, p: PrincipalDep) -> J:
    return credentials.set_credential(core, p, v, key, body.value.get_secret_value(), must_exist=True)


@router.delete("/{v}/credentials/{key}", status_code=204)
def delete_credential(v: str, key: str, core: CoreDep, p: PrincipalDep, force: bool = False) -> Response:
    credentials.delete_credential(core, p, v, key, force)
    return Response(status_code=204)


@router.post("/{v}/credentials/{key}/reveal")
def reveal_credential(v: str, key: str, body: StepUp | None = None, *, core: CoreDep, p: PrincipalDep) -> J:
    return credentials.reveal(core, p, v, key, _pw(body))


@router.get("/{v}/services")
def list_services(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return services.list_services(core, p, v)


@router.post("/{v}/services", status_code=201)
def add_service(v: str, body: ServiceIn, core: CoreDep, p: PrincipalDep) -> J:
    return services.add_service(core, p, v, body.pw(), body.service)


@router.put("/{v}/services")
def replace_services(v: str, body: ServicesReplace, core: CoreDep, p: PrincipalDep) -> J:
    return services.replace_services(core, p, v, body.pw(), body.services)


@router.get("/{v}/services/{name}")
def get_service(v: str, name: str, core: CoreDep, p: PrincipalDep) -> J:
    return services.get_service(core, p, v, name)


@router.put("/{v}/services/{name}")
def put_service(v: str, name: str, body: ServiceIn, core: CoreDep, p: PrincipalDep) -> J:
    return services.add_service(core, p, v, body.pw(), {**body.service, "name": name}, replace=True)


@router.patch("/{v}/services/{name}")
def patch_service(v: str, name: str, body: ServiceEnable, core: CoreDep, p: PrincipalDep) -> J:
    return services.set_enabled(core, p, v, body.pw(), name, body.enabled)


@router.delete("/{v}/services/{name}", status_code=204)
def delete_service(
    v: str, name: str, body: StepUp | None = None, *, core: CoreDep, p: PrincipalDep
) -> Response:
    services.remove_service(core, p, v, _pw(body), name)
    return Response(status_code=204)


@router.get("/{v}/agents")
def list_agent_grants(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return {"agents": vaults.list_grants(core, p, v, "agent")}


@router.put("/{v}/agents/{name}")
def put_agent_grant(v: str, name: str, body: GrantIn, core: CoreDep, p: PrincipalDep) -> J:
    return vaults.set_grant(core, p, v, body.pw(), "agent", name, body.role)


@router.delete("/{v}/agents/{name}", status_code=204)
def delete_agent_grant(
    v: str, name: str, body: StepUp | None = None, *, core: CoreDep, p: PrincipalDep
) -> Response:
    vaults.remove_grant(core, p, v, _pw(body), "agent", name)
    return Response(status_code=204)


@router.get("/{v}/users")
def list_user_grants(v: str, core: CoreDep, p: PrincipalDep) -> J:
    return {"users": vaults.list_grants(core, p, v, "user")}


@router.put("/{v}/users/{email}")
def put_user_grant(v: str, email: str, body: GrantIn, core: CoreDep, p: PrincipalDep) -> J:
    return vaults.set_grant(core, p, v, body.pw(), "user", email, body.role)


@router.delete("/{v}/users/{email}", status_code=204)
def delete_user_grant(
    v: str, email: str, body: StepUp | None = None, *, core: CoreDep, p: PrincipalDep
) -> Response:
    vaults.remove_grant(core, p, v, _pw(body), "user", email)
    return Response(status_code=204)
