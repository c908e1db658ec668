"""The small exception tree shared by the store, the API, the CLI and the proxy.

Every error carries a machine `code`, an HTTP `status`, a one-sentence `message` and a `hint`.
Messages name things (vaults, keys, hosts, services) and NEVER secret values or tokens.
"""

from __future__ import annotations

from typing import Any


class AgentVaultError(Exception):
    """Base class: maps to exactly one HTTP status and one CLI exit code (1)."""

    code = "internal"
    status = 500
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        self.extra: dict[str, Any] = extra

    def body(self) -> dict[str, Any]:
        """The SPEC §6 JSON body: error, message, hint plus extra fields."""
        return {"error": self.code, "message": self.message, "hint": self.hint, **self.extra}


def _kind(name: str, code: str, status: int, hint: str = "") -> type[AgentVaultError]:
    return type(name, (AgentVaultError,), {"code": code, "status": status, "hint": hint})


InvalidRequest = _kind("InvalidRequest", "invalid_request", 400, "Check the command's arguments.")
BadRequest = _kind("BadRequest", "bad_request", 400)
Unauthenticated = _kind("Unauthenticated", "unauthenticated", 401, "Log in with 'agent-vault auth login'.")
StepUpFailed = _kind("StepUpFailed", "step_up_failed", 401, "Re-enter your login password.")
Forbidden = _kind("Forbidden", "forbidden", 403)
NotFound = _kind("NotFound", "not_found", 404)
Conflict = _kind("Conflict", "conflict", 409)
RateLimited = _kind("RateLimited", "rate_limited", 429, "Slow down and retry after the given delay.")
Locked = _kind("Locked", "locked", 503, "Start the server and unlock it with the master password.")
NotInitialised = _kind("NotInitialised", "not_initialised", 400, "Run 'agent-vault init'.")
WrongMasterPassword = _kind("WrongMasterPassword", "wrong_master_password", 401)
VaultRequired = _kind("VaultRequired", "vault_required", 400)
VaultForbidden = _kind("VaultForbidden", "vault_forbidden", 403, "Use a vault this token is granted on.")
InUse = _kind("InUse", "in_use", 409, "Remove the services that use it, or pass force.")
MissingValue = _kind("MissingValue", "missing_value", 400, "Provide a value for every missing credential.")
ValueNotAllowed = _kind(
    "ValueNotAllowed",
    "value_not_allowed",
    400,
    "Agents name credential keys; humans enter values at approval.",
)
UnknownCredential = _kind(
    "UnknownCredential", "unknown_credential", 400, "Propose the credential slot as well."
)
TooManyPending = _kind(
    "TooManyPending", "too_many_pending_proposals", 429, "Wait for a human to review the pending proposals."
)
ProxyDisabled = _kind("ProxyDisabled", "proxy_disabled", 404, "Start the server without --disable-proxy.")


class CredentialNotFound(AgentVaultError):
    """A service references a key that has no value in the vault (proxy: 502)."""

    code = "credential_not_found"
    status = 502
    hint = "Set it with 'agent-vault vault credential set KEY'."

    def __init__(self, key: str) -> None:
        super().__init__(f"credential {key} has no value in this vault", key=key)
        self.key = key


class CredentialCorrupt(AgentVaultError):
    """A stored ciphertext failed to decrypt (tampered row or wrong key)."""

    code = "credential_corrupt"
    status = 502
    hint = "Set the credential again; check the database for tampering."

    def __init__(self, vault: str, key: str) -> None:
        super().__init__(f"credential {key} in vault {vault} failed to decrypt", key=key)
        self.key = key


class SubstitutionError(AgentVaultError):
    """An injected value is unusable in its position (CR, LF or NUL)."""

    code = "substitution_error"
    status = 502
    hint = "Store a value without line breaks or NUL bytes."

    def __init__(self, key: str) -> None:
        super().__init__(f"credential {key} contains characters not allowed in a request", key=key)
        self.key = key


ProxyAuthRequired = _kind(
    "ProxyAuthRequired",
    "proxy_auth_required",
    407,
    "Set HTTPS_PROXY=http://<token>:<vault>@host:port (or run under 'agent-vault vault run').",
)
ServiceNotAllowed = _kind(
    "ServiceNotAllowed", "service_not_allowed", 403, "Propose the service with POST /v1/proposals."
)
ServiceDisabled = _kind(
    "ServiceDisabled", "service_disabled", 403, "Ask a vault admin to enable the service."
)
MethodNotAllowed = _kind(
    "MethodNotAllowed", "method_not_allowed", 403, "Use an allowed method or propose a broader service."
)
InvalidPath = _kind(
    "InvalidPath", "invalid_path", 400, "Send a normalised path without dot segments or encoded slashes."
)
InsecureScheme = _kind(
    "InsecureScheme",
    "insecure_scheme",
    403,
    "Use https://, or ask a vault admin to allow plain HTTP for this service "
    "('agent-vault vault service set NAME --allow-http').",
)
SsrfBlocked = _kind(
    "SsrfBlocked",
    "ssrf_blocked",
    403,
    "An admin can allow the range with 'agent-vault server --allow-net CIDR'.",
)
BodyTooLarge = _kind("BodyTooLarge", "body_too_large", 413, "Send a smaller body.")
HeadersTooLarge = _kind(
    "HeadersTooLarge", "headers_too_large", 431, "Send a request line and headers under 64 KiB."
)
ResponseTooLarge = _kind(
    "ResponseTooLarge",
    "response_too_large",
    502,
    "The upstream's decoded response is over the proxy's --max-buffered-bytes; ask for less data "
    "(or an uncompressed response).",
)
UpstreamDns = _kind("UpstreamDns", "upstream_dns", 502, "Check the host name.")
UpstreamUnreachable = _kind("UpstreamUnreachable", "upstream_unreachable", 502, "Check the upstream is up.")
UpstreamTls = _kind(
    "UpstreamTls", "upstream_tls", 502, "Check the upstream's certificate (or --upstream-ca)."
)
UpstreamTimeout = _kind("UpstreamTimeout", "upstream_timeout", 504, "Retry later.")
ProxyInternal = _kind("ProxyInternal", "internal", 502, "Retry; report the incident id to an admin.")
