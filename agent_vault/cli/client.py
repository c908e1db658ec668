"""The CLI's HTTP client: base URL + bearer token; API errors become AgentVaultError (exit 1).

Which server (`resolve_addr`): `--addr` > AGENT_VAULT_ADDR > `.agent-vault.toml` `addr` (those three are
the caller's `addr`, see cli/common.api_addr) > the server running now for this home (its
`<home>/server.json`, the addresses `status` shows) > the stored login's addr > http://127.0.0.1:14321.
"""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from agent_vault.cli.loginstore import clear_login as clear_login
from agent_vault.cli.loginstore import load_login as load_login
from agent_vault.cli.loginstore import save_login as save_login
from agent_vault.cli.loginstore import session_file as session_file
from agent_vault.errors import (
    AgentVaultError,
    InvalidRequest,
    ServerStartError,
    ServerUnreachable,
    Unauthenticated,
)
from agent_vault.home import Home
from agent_vault.lifecycle import probe

DEFAULT_ADDR = "http://127.0.0.1:14321"


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verification (certifi's bundle; trust_env off, as the client is), built once per
    process: loading the bundle took ~25 ms per request (`vault run` makes six)."""
    return httpx.create_ssl_context(trust_env=False)


#: The hint of a step-up refusal when the CLI sent no password (no terminal to ask on, no --password-stdin).
NO_TERMINAL_HINT = "No terminal to ask for your password: pass --password-stdin and pipe it on stdin."
#: A rejected AGENT_VAULT_TOKEN (it wins over the stored login): logging in would not help.
REJECTED_ENV_HINT = (
    "Check AGENT_VAULT_TOKEN: the token is wrong, expired or revoked. Ask a human for a new agent token "
    "('agent-vault agent rotate NAME'), or unset AGENT_VAULT_TOKEN to use your own login."
)
#: `vault_required` at the command line: the API's hint speaks of the X-Vault header the CLI sends itself.
CLI_VAULT_REQUIRED_HINT = "Set AGENT_VAULT_VAULT or pass --vault NAME."


def delay_words(seconds: int) -> str:
    """`882` -> `14m 42s`; `45` -> `45s`; `3600` -> `1h 0m`."""
    h, rest = divmod(max(0, seconds), 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s}s" if m else f"{s}s"


class ApiError(AgentVaultError):
    """An error answered by the server, carrying its code and status. A 429 says how long to wait
    (the body's `retry_after`) in its message, so that the one error line does."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        message = str(body.get("message") or f"HTTP {status}")
        wait = body.get("retry_after")
        if status == 429 and isinstance(wait, int | float) and not isinstance(wait, bool):
            message += f"; retry after {delay_words(int(wait))}"
        fields = body.get("fields")
        if isinstance(fields, list) and fields:  # a 422: name what to fix (locations, no input values)
            named = [f"{f.get('loc')}: {f.get('msg')}" for f in fields[:5] if isinstance(f, dict)]
            message += f": {'; '.join(named)}" if named else ""
        super().__init__(message, hint=str(body.get("hint") or ""))
        self.status = status
        self.code = str(body.get("error") or "error")
        self.extra = {k: v for k, v in body.items() if k not in ("error", "message", "hint")}


def running_api(home: Path) -> str | None:
    """The API address of the server running now for `home` (None: none runs, or it is still starting)."""
    try:
        running = probe(Home(home))
    except ServerStartError:  # an unreadable lock file: no server of this home to point at
        return None
    return running.api if running is not None else None


def resolve_addr(addr: str | None, home: Path, login: dict[str, Any] | None) -> str:
    """The API address for this invocation: `addr` (--addr / AGENT_VAULT_ADDR / .agent-vault.toml) >
    AGENT_VAULT_ADDR > the server running now for this home > the stored login's addr > the default.

    The running server wins over the stored login when they differ: the login's addr records where the
    CLI logged in once (an old port, say), the server's state file is where this home's server listens
    now. Letting a stale login win sent the next `auth login` password (and every command's token) to
    whatever listens on the old port, possibly someone else's instance. A login to a server elsewhere is
    still used whenever no server runs for this home, and --addr, AGENT_VAULT_ADDR or the project file
    select it explicitly. The login token is only ever sent to the login's own addr (`Client`)."""
    chosen = (
        addr
        or os.environ.get("AGENT_VAULT_ADDR")
        or running_api(home)
        or (login or {}).get("addr")
        or DEFAULT_ADDR
    )
    return str(chosen).rstrip("/")


class Client:
    """Talks to the control API (address: `resolve_addr`). Token: AGENT_VAULT_TOKEN, else the stored CLI
    login when it was made at this address."""

    def __init__(self, addr: str | None, home: Path, token: str | None = None) -> None:
        login = load_login(home)
        self.addr = resolve_addr(addr, home, login)
        env_token = os.environ.get("AGENT_VAULT_TOKEN")
        #: where the token came from: "argument", "AGENT_VAULT_TOKEN", "login" (None: no token)
        self.auth_source: str | None = "argument" if token else "AGENT_VAULT_TOKEN" if env_token else None
        self.token = (
            token
            or env_token
            or (
                (login or {}).get("token")
                if login and login.get("addr", self.addr).rstrip("/") == self.addr
                else None
            )
        )
        if self.token and self.auth_source is None:
            self.auth_source = "login"
        self.home = home

    def _for_the_cli(self, err: ApiError, authed: bool) -> None:
        """Hints written for API callers, reworded for someone at this command line: a rejected
        AGENT_VAULT_TOKEN is no reason to log in, a vault is named with --vault or AGENT_VAULT_VAULT
        (not an X-Vault header), and a refused value is one of the command's arguments."""
        if err.code == "unauthenticated" and authed and self.auth_source == "AGENT_VAULT_TOKEN":
            err.hint = REJECTED_ENV_HINT
        elif err.code == "vault_required":
            names = err.extra.get("vaults")
            may_use = (
                f" (this token may use: {', '.join(map(str, names))})"
                if isinstance(names, list) and names
                else ""
            )
            err.hint = CLI_VAULT_REQUIRED_HINT.rstrip(".") + may_use + "."
        elif err.code == "invalid_request" and err.hint == InvalidRequest.api_hint:
            err.hint = InvalidRequest.hint

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bool = False,
    ) -> Any:
        h = dict(headers or {})
        if auth:
            if not self.token:
                raise Unauthenticated(
                    "not logged in", hint="Run 'agent-vault auth login' or set AGENT_VAULT_TOKEN."
                )
            h["Authorization"] = f"Bearer {self.token}"
        try:
            with httpx.Client(timeout=30.0, trust_env=False, verify=_tls()) as c:
                r = c.request(method, self.addr + path, json=json_body, params=params, headers=h)
        except httpx.TimeoutException:
            raise ServerUnreachable(
                f"the server at {self.addr} did not answer within 30 seconds",
                hint="Is it overloaded or stuck? Check with 'agent-vault status'.",
            ) from None
        except httpx.HTTPError:
            raise ServerUnreachable(
                f"cannot reach the server at {self.addr}",
                hint="Is the server running? Check with 'agent-vault status'; start it with "
                "'agent-vault server', or point --addr at it.",
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": "http_error", "message": f"HTTP {r.status_code}"}
            err = ApiError(r.status_code, body if isinstance(body, dict) else {"message": str(body)})
            sent = json_body.get("password", "") if isinstance(json_body, dict) else ""
            if err.code == "step_up_failed" and sent is None:  # cli/common.step_up had no terminal
                err.hint = NO_TERMINAL_HINT
            self._for_the_cli(err, auth)
            raise err
        if raw:
            return r
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def check_reachable(self) -> None:
        """ServerUnreachable (one line) unless the server answers: called before asking for a password
        that would only be sent to it, so that nobody types a password for an unreachable server."""
        self.request("GET", "/v1/status", auth=False)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, json_body=body if body is not None else {}, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, json_body=body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PATCH", path, json_body=body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("DELETE", path, json_body=body, **kw)
