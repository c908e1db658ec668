"""Who is asking and what happens to their request: pure decisions over the runtime snapshot.

No mitmproxy here. The addon calls `authenticate` once per connection (CONNECT) or per
absolute-form request, and `decide` once per request. Both raise AgentVaultError subclasses
carrying the SPEC §6 code; the addon turns them into proxy error responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_vault.domain.principal import Principal
from agent_vault.errors import (
    AgentVaultError,
    CredentialCorrupt,
    InsecureScheme,
    InvalidPath,
    MethodNotAllowed,
    ProxyAuthRequired,
    ServiceDisabled,
    ServiceNotAllowed,
    VaultForbidden,
)
from agent_vault.hostpath import normalize_path
from agent_vault.matching import Denied, Match
from agent_vault.proxy.auth import MalformedProxyAuth, parse_proxy_authorization, token_digest
from agent_vault.proxy.inject import Injection, build_injection
from agent_vault.servicedef import SUPPORTED_AUTH_TYPES, ServiceDef
from agent_vault.snapshot import POLICY_RANK, Snapshot, VaultView, effective_policy, select_vault

__all__ = ["POLICY_RANK", "effective_policy"]  # re-exported: the rule lives in snapshot


def _sends(result: Match | Denied | None) -> bool:
    return isinstance(result, Match) and result.service.sends_credentials


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated proxy caller bound to one vault. Holds the token digest, never the token."""

    digest: str
    principal: Principal
    vault: str
    policy: str  # effective unmatched policy (session override applied)


def authenticate(snapshot: Snapshot, proxy_authorization: str | None, x_vault: str | None) -> Identity:
    """SPEC §5.2: token from Proxy-Authorization, vault from its password part or X-Vault."""
    try:
        creds = parse_proxy_authorization(proxy_authorization)
    except MalformedProxyAuth:
        raise ProxyAuthRequired("the Proxy-Authorization header is malformed") from None
    if creds is None:
        raise ProxyAuthRequired("proxy authentication required")
    digest = token_digest(creds.token)
    p = snapshot.principal(digest)
    if p is None:
        raise ProxyAuthRequired("the proxy token is unknown, expired or revoked")
    hint = creds.vault_hint or x_vault or None
    vault = resolve_vault(snapshot, p, hint)
    return Identity(digest, p, vault, effective_policy(snapshot.vaults[vault], p))


def resolve_vault(snapshot: Snapshot, p: Principal, hint: str | None) -> str:
    """The proxy's vault: `select_vault`, except that a human's login token is never a proxy
    credential (sessions from `vault run` are)."""
    if p.kind == "user":
        raise VaultForbidden(
            "user login tokens are not proxy credentials",
            hint="Use 'agent-vault vault run -- CMD' to get a session token.",
        )
    return select_vault(snapshot.vaults, p, hint, how_to_name="HTTPS_PROXY=http://<token>:<vault>@host:port")


def recheck(snapshot: Snapshot, ident: Identity) -> Identity:
    """Re-validate a connection-bound identity for the next request: revocation and policy changes
    apply to the very next request, also on an open connection."""
    p = snapshot.principal(ident.digest)
    if p is None:
        raise ProxyAuthRequired("the proxy token is expired or revoked")
    view = snapshot.vaults.get(ident.vault)
    if view is None or p.role_on(ident.vault) is None:
        raise VaultForbidden(f"this token may no longer use vault {ident.vault}")
    policy = effective_policy(view, p)
    if p is ident.principal and policy == ident.policy:
        return ident
    return Identity(ident.digest, p, ident.vault, policy)


def wants_mitm(view: VaultView, policy: str, host: str, port: int) -> bool:
    """SPEC §5.3: intercept if a service could match the target, or the policy is not `tunnel`."""
    return policy != "tunnel" or view.index.could_match(host, port)


def _check_narrowed(p: Principal, result: Match | Denied | None, method: str, host: str, port: int) -> None:
    """A narrowed session (issue 19) may use only its services and methods: anything else is 403
    `service_not_allowed` whatever the vault's policy or enforcement mode."""
    name = result.service.name if isinstance(result, Match) else getattr(result, "service", None)
    if p.allows(name, method):
        return
    scope = ", ".join(p.only_services) if p.only_services is not None else "all services"
    if p.only_methods is not None:
        scope += f" (methods {', '.join(p.only_methods)})"
    raise ServiceNotAllowed(
        f"this session may not send {method} to {host}:{port}",
        hint=f"This session is narrowed to {scope}; ask the human who started it for a wider one.",
        narrowed={"services": p.only_services, "methods": p.only_methods},
    )


@dataclass(slots=True)
class Decision:
    """What to do with one request. `injection` holds secrets: never log or store it."""

    kind: str  # injected | passthrough | unmatched_passthrough | would_deny
    service: ServiceDef | None = None
    injection: Injection | None = field(default=None, repr=False)
    would_deny_code: str | None = None


def decide(
    view: VaultView,
    ident: Identity,
    host: str,
    port: int,
    method: str,
    path: str,
    proposals_url: str,
    discover_url: str,
    scheme: str,
) -> Decision:
    """Match and authorise one request; raise the proxy error it deserves (or note it in dry-run).

    `scheme` is the request's own (`http` for absolute-form `http://` and for plaintext inside
    CONNECT): anything but `https` never carries a credential unless the service allows it.
    The path is matched on `normalize_path(path).canonical`, and any request that may carry a
    credential (injection or `{{KEY}}` substitution, whatever the auth type) is refused with
    `invalid_path` when the raw path could mean another path to some upstream.
    """
    rp = normalize_path(path)
    index = view.index
    result = index.match_path(host, port, method, rp.canonical, scheme)
    if rp.unparam is not None:  # `;params`: Tomcat/Spring read `/a;x/b` as `/a/b`
        alt = index.match_path(host, port, method, rp.unparam, scheme)
        if alt != result and (_sends(result) or _sends(alt)):
            sender = result if isinstance(result, Match) and _sends(result) else alt
            name = sender.service.name if isinstance(sender, Match) else host
            raise InvalidPath(f"path to service {name} has ; parameters that change which service matches")
    if ident.principal.narrowed:
        _check_narrowed(ident.principal, result, method, host, port)
    dry_run = view.enforcement in ("dry-run", "learn")  # learn: dry-run that also drafts proposals
    if isinstance(result, Match):
        svc = result.service
        if svc.sends_credentials and rp.problem is not None:
            raise InvalidPath(f"path to service {svc.name} has {rp.problem}")
        if not svc.injects:
            return Decision("passthrough", svc)
        for key in svc.auth.referenced_keys():
            if key in view.corrupt:
                raise CredentialCorrupt(view.name, key)
        return Decision("injected", svc, build_injection(svc.auth, view.values))
    err: AgentVaultError
    if isinstance(result, Denied):
        if result.code == "insecure_scheme":
            err = InsecureScheme(
                f"service {result.service} in vault {view.name} is HTTPS-only: refused {scheme}:// "
                f"to {host}:{port}",
                hint=f"Use https://, or ask a vault admin to allow plain HTTP for the service "
                f"('agent-vault vault service set {result.service} --allow-http').",
                service=result.service,
            )
        elif result.code == "service_disabled":
            err = ServiceDisabled(
                f"service {result.service} is disabled in vault {view.name}", service=result.service
            )
        else:
            err = MethodNotAllowed(
                f"service {result.service} does not allow {method}",
                service=result.service,
                allowed_methods=result.allowed_methods,
            )
    elif ident.policy == "deny":
        err = ServiceNotAllowed(
            f"no service in vault {view.name} allows {host}:{port}",
            proposal_hint={
                "host": host,
                "port": port,
                "endpoint": "POST /v1/proposals",
                "proposals_url": proposals_url,
                "discover": discover_url,
                "supported_auth_types": SUPPORTED_AUTH_TYPES,
                "example": {
                    "services": [
                        {
                            "action": "set",
                            "name": "my-service",
                            "host": host,
                            "auth": {"type": "bearer", "token": "MY_TOKEN"},
                        }
                    ],
                    "credentials": [
                        {"action": "set", "key": "MY_TOKEN", "description": "what the token is for"}
                    ],
                    "message": "why the agent needs it",
                },
            },
        )
    else:
        return Decision("unmatched_passthrough")
    if dry_run:
        return Decision("would_deny", would_deny_code=err.code)
    raise err
