"""The CLI's HTTP client: base URL + bearer token; API errors become AgentVaultError (exit 1)."""

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
from agent_vault.errors import AgentVaultError, ServerUnreachable, Unauthenticated

DEFAULT_ADDR = "http://127.0.0.1:14321"


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verification (certifi's bundle; trust_env off, as the client is), built once per
    process: loading the bundle took ~25 ms per request (`vault run` makes six)."""
    return httpx.create_ssl_context(trust_env=False)


class ApiError(AgentVaultError):
    """An error answered by the server, carrying its code and status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message") or f"HTTP {status}"), hint=str(body.get("hint") or ""))
        self.status = status
        self.code = str(body.get("error") or "error")
        self.extra = {k: v for k, v in body.items() if k not in ("error", "message", "hint")}


class Client:
    """Talks to the control API. Token: AGENT_VAULT_TOKEN, else the stored CLI login."""

    def __init__(self, addr: str | None, home: Path, token: str | None = None) -> None:
        login = load_login(home)
        self.addr = addr or os.environ.get("AGENT_VAULT_ADDR") or (login or {}).get("addr") or DEFAULT_ADDR
        self.addr = self.addr.rstrip("/")
        self.token = (
            token
            or os.environ.get("AGENT_VAULT_TOKEN")
            or (
                (login or {}).get("token")
                if login and login.get("addr", self.addr).rstrip("/") == self.addr
                else None
            )
        )
        self.home = home

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
            raise ApiError(r.status_code, body if isinstance(body, dict) else {"message": str(body)})
        if raw:
            return r
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

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
