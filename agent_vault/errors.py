"""The small exception tree shared by the store, the API, the CLI and the proxy.

Every error carries a machine `code`, an HTTP `status`, a one-sentence `message` and a `hint`.
Messages name things (vaults, keys, hosts, services) and NEVER secret values or tokens.

Each class maps to exactly one HTTP status (the API answers `status` with `body()`) and, in the CLI,
to one line `error: MESSAGE (HINT)` and exit 1. Codes are unique across the tree (tests/unit/
test_errors.py walks it); `ProxyInternal` is the proxy's face of the base `internal`. A bare
`AgentVaultError(...)` is a 500 `internal`: raise a subclass. A few tree members live beside their
only user: `home.HomeError`, `proxy.runner.BindError`, `proxy.engine_compat.EngineIncompatible`,
`api.observability.AuditBusy`, `cli.common.Cancelled`, `cli.certs.CaUnavailable` and `cli.client.
ApiError` (a server answer replayed in the CLI, carrying the server's code and status).

Outside the tree on purpose: internal control flow of pure cores, always caught and mapped at the
edge, never shown as such to a user (the tree's classes are for answers):
- `crypto.DecryptionError`: -> WrongMasterPassword / KeyMaterialUnavailable (keys), CredentialCorrupt.
- `hostpath.InvalidHost` (ValueError): -> 422 in service validation; the proxy's host checks.
- `proxy.auth.MalformedProxyAuth` (ValueError): -> 407 proxy_auth_required (proxy.decide).
- `proxy.ssrf.ResolveError`: -> 502 upstream_dns.
- `proxy.engine.BodyOverLimit`: from a request-body stream; the engine's HttpStream cuts the upload (413).
- `proxy.decoding.DecodedTooLarge` / `CorruptEncoding`: -> 502 response_too_large / internal.
- `proxy.sources.SourceFailed`: -> 502 credential_unavailable (a command or file source failed).
- `oskeyring.KeyringUnavailable`: -> a fallback (password sources, the 0600 login file) and one note.
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


class InvalidRequest(AgentVaultError):
    code = "invalid_request"
    status = 422
    hint = "Check the command's arguments."
    api_hint = "Check the request body's fields (and path and query parameters)."  # over HTTP (api/app)


class BadRequest(AgentVaultError):
    code = "bad_request"
    status = 400
    hint = "Send a well-formed request: through the proxy an absolute URL or CONNECT, to the API valid JSON."


class Unauthenticated(AgentVaultError):
    code = "unauthenticated"
    status = 401
    hint = "Log in with 'agent-vault auth login'."


class StepUpFailed(AgentVaultError):
    code = "step_up_failed"
    status = 401
    hint = "Re-enter your login password."


class Forbidden(AgentVaultError):
    code = "forbidden"
    status = 403
    hint = "Ask a vault admin (or the instance owner) for the role this needs."


class NotFound(AgentVaultError):
    code = "not_found"
    status = 404
    hint = "Check the name or id; the matching 'list' command shows what exists."


class Conflict(AgentVaultError):
    code = "conflict"
    status = 409
    hint = "Check the current state with the matching 'list' or 'show' command, then retry."


class RateLimited(AgentVaultError):
    code = "rate_limited"
    status = 429
    hint = "Slow down and retry after the given delay."


class Locked(AgentVaultError):
    code = "locked"
    status = 503
    hint = "Start the server and unlock it with the master password."


class NotInitialised(AgentVaultError):
    code = "not_initialised"
    status = 400
    hint = "Run 'agent-vault init'."


class WrongMasterPassword(AgentVaultError):
    code = "wrong_master_password"
    status = 401
    hint = "Type the master password chosen at init (not your login password)."


class VaultRequired(AgentVaultError):
    code = "vault_required"
    status = 400
    hint = "Name the vault: the proxy URL's password (http://<token>:<vault>@host:port) or an X-Vault header."


class VaultForbidden(AgentVaultError):
    code = "vault_forbidden"
    status = 403
    hint = "Use a vault this token is granted on."


class InUse(AgentVaultError):
    code = "in_use"
    status = 409
    hint = "Remove the services that use it first, or force it (--force; API: force=true)."


class MissingValue(AgentVaultError):
    code = "missing_value"
    status = 400
    hint = "Provide a value for every missing credential."


class ValueNotAllowed(AgentVaultError):
    code = "value_not_allowed"
    status = 400
    hint = "Agents name credential keys; humans enter values at approval."


class UnknownCredential(AgentVaultError):
    code = "unknown_credential"
    status = 400
    hint = "Propose the credential slot as well."


class TooManyPending(AgentVaultError):
    code = "too_many_pending_proposals"
    status = 429
    hint = "Wait for a human to review the pending proposals."


class ProxyDisabled(AgentVaultError):
    code = "proxy_disabled"
    status = 404
    hint = "Start the server without --disable-proxy."


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


class CredentialUnavailable(AgentVaultError):
    """A credential value could not be obtained (proxy: 502): a brokered one (OAuth2 access token, AWS
    STS keys; `message`/`hint` name the service, the endpoint's host and its error code) or a dynamic
    source (command or file; `key` names it, the message says why in general terms: timeout, exit
    status, empty, too large). The request is never sent unauthenticated; never a value or output."""

    code = "credential_unavailable"
    status = 502
    hint = "Check the service's token endpoint and credentials."

    @classmethod
    def from_source(cls, key: str, why: str) -> CredentialUnavailable:
        return cls(
            f"credential {key} is unavailable: {why}",
            hint="The request was not sent. Ask the instance owner to check the source of the credential "
            "named in `key` ('agent-vault vault credential list' shows its kind).",
            key=key,
        )


class ProxyAuthRequired(AgentVaultError):
    code = "proxy_auth_required"
    status = 407
    hint = "Set HTTPS_PROXY=http://<token>:<vault>@host:port (or run under 'agent-vault vault run')."


class ServiceNotAllowed(AgentVaultError):
    code = "service_not_allowed"
    status = 403
    hint = "Propose the service with POST /v1/proposals."


class ServiceDisabled(AgentVaultError):
    code = "service_disabled"
    status = 403
    hint = "Ask a vault admin to enable the service."


class MethodNotAllowed(AgentVaultError):
    code = "method_not_allowed"
    status = 403
    hint = "Use an allowed method or propose a broader service."


class ExfiltrationBlocked(AgentVaultError):
    """A request carried a credential of its vault (or a placeholder or canary) towards a host that
    is not a service referencing that key. The message names the key, never the value."""

    code = "exfiltration_blocked"
    status = 403
    hint = "Credentials go only to the services that use them; ask a vault admin if this host needs it."


class QuotaExceeded(RateLimited):
    """A service's request quota for this token is spent for the current window."""

    code = "quota_exceeded"
    hint = "The service's request quota is spent; retry after the given delay."


class BudgetExceeded(RateLimited):
    """A service's LLM token budget is spent for the current window."""

    code = "budget_exceeded"
    hint = "The service's token budget is spent until the window rolls over."


class InvalidPath(AgentVaultError):
    code = "invalid_path"
    status = 400
    hint = "Send a normalised path without dot segments or encoded slashes."


class InsecureScheme(AgentVaultError):
    code = "insecure_scheme"
    status = 403
    hint = (
        "Use https://, or ask a vault admin to allow plain HTTP for this service ('agent-vault "
        "vault service set NAME --allow-http')."
    )


class ApprovalDenied(AgentVaultError):
    """A held request (service flag `approval_required`) was denied by a human."""

    code = "approval_denied"
    status = 403
    hint = "A human denied this request; ask them why before trying again."


class ApprovalTimeout(AgentVaultError):
    """A held request got no decision within the service's approval timeout."""

    code = "approval_timeout"
    status = 403
    hint = "No human decided in time; retry when someone can approve ('agent-vault vault hold list')."


class HoldInterrupted(AgentVaultError):
    """A held request lost its hold: the server stopped or restarted (holds survive nothing)."""

    code = "hold_interrupted"
    status = 503
    hint = "The server stopped while the request waited for approval; retry once it is back."


class TooManyHolds(AgentVaultError):
    """Too many requests of one agent (or in all) are already waiting for approval."""

    code = "too_many_holds"
    status = 429
    hint = "Wait for a human to decide the pending holds ('agent-vault vault hold list')."


class SsrfBlocked(AgentVaultError):
    code = "ssrf_blocked"
    status = 403
    hint = "An admin can allow the range with 'agent-vault server --allow-net CIDR'."


class BodyTooLarge(AgentVaultError):
    code = "body_too_large"
    status = 413
    hint = "Send a smaller body."


class HeadersTooLarge(AgentVaultError):
    code = "headers_too_large"
    status = 431
    hint = "Send a request line and headers under 64 KiB."


class ResponseTooLarge(AgentVaultError):
    code = "response_too_large"
    status = 502
    hint = (
        "The upstream's decoded response is over the proxy's --max-buffered-bytes; ask for less "
        "data (or an uncompressed response)."
    )


class UpstreamDns(AgentVaultError):
    code = "upstream_dns"
    status = 502
    hint = "Check the host name."


class UpstreamUnreachable(AgentVaultError):
    code = "upstream_unreachable"
    status = 502
    hint = "Check the upstream is up."


class UpstreamTls(AgentVaultError):
    code = "upstream_tls"
    status = 502
    hint = "Check the upstream's certificate (or --upstream-ca)."


class UpstreamTimeout(AgentVaultError):
    code = "upstream_timeout"
    status = 504
    hint = "Retry later."


class ProxyInternal(AgentVaultError):
    code = "internal"
    status = 502
    hint = "Retry; report the incident id to an admin."


# -- local failures: the CLI and server start-up (never raised inside a request) ------------------


class SchemaTooNew(AgentVaultError):
    """The database was migrated by a newer agent-vault: this code must not read or write it."""

    code = "schema_too_new"
    status = 500
    hint = "Upgrade agent-vault; this database was written by a newer version."


class KeyMaterialUnavailable(AgentVaultError):
    """The data key or the instance CA cannot be read or does not decrypt (files missing or tampered)."""

    code = "key_material_unavailable"
    status = 500
    hint = "The home's key files are missing or were changed; restore the home from a backup."


class MasterPasswordRequired(AgentVaultError):
    code = "master_password_required"
    status = 400
    hint = "Set AGENT_VAULT_MASTER_PASSWORD or pass --password-stdin."


class ConfigError(AgentVaultError):
    """A server or CLI setting names something unusable (e.g. an unreadable --upstream-ca)."""

    code = "config_invalid"
    status = 400
    hint = "Fix the setting named in the message ('agent-vault server --help' lists them)."


class ServerStartError(AgentVaultError):
    """A listener or the proxy engine did not come up as configured."""

    code = "server_start_failed"
    status = 500
    hint = "See the messages above; check that the ports are free and the home is writable."


class ServerUnreachable(AgentVaultError):
    """The CLI cannot connect to the server's API."""

    code = "server_unreachable"
    status = 503
    hint = "Start it with 'agent-vault server' or check --addr."


class BadServerResponse(AgentVaultError):
    """The server answered, but not with what the CLI needs (e.g. no PEM, no proxy port)."""

    code = "bad_server_response"
    status = 502
    hint = "Check that --addr (or AGENT_VAULT_ADDR) points at an agent-vault server of this version."


class FileAccessError(AgentVaultError):
    """A local file or folder outside the home cannot be created, read or written."""

    code = "file_access_failed"
    status = 500
    hint = "Check that the path exists and that you may read and write there."


class DatabaseUnreadable(AgentVaultError):
    """A database cannot be read: a file opened directly (server stopped), or PostgreSQL unreachable."""

    code = "database_unreadable"
    status = 500
    hint = "Check the database file's permissions, or that PostgreSQL is reachable."


class InstallationIncomplete(AgentVaultError):
    """A file shipped with the package is missing."""

    code = "installation_incomplete"
    status = 500
    hint = "Reinstall agent-vault (pip install --force-reinstall agent-vault)."
