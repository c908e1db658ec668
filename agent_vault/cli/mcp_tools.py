"""The tools of `agent-vault mcp` (see `agent_vault.cli.mcp`): an MCPServer over the agent-facing API.

Imported only by that command (the MCP SDK is not loaded for other commands).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError

from agent_vault import __version__, validation

INSTRUCTIONS = (
    "agent-vault brokers API credentials: your HTTPS requests go through its proxy, which injects the "
    "real credential for the services of your vault. Call discover to see them; if you need another "
    "service, call propose and tell the human; poll proposal_status for the outcome. A request to a "
    "service that needs approval waits until a human decides (see list_holds)."
)
TIMEOUT = 30.0


def _error(code: str, message: str, hint: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, "hint": hint, **extra}


class AgentApi:
    """The agent-facing API with the agent's token (async; one short-lived connection per call)."""

    def __init__(self, addr: str, token: str, vault: str | None) -> None:
        self.addr = addr.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        if vault:
            self._headers["X-Vault"] = vault

    async def call(self, method: str, path: str, body: Any = None) -> tuple[bool, dict[str, Any]]:
        """(ok, JSON body); a failure is the server's SPEC §6 body or one made here."""
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as c:
                r = await c.request(method, self.addr + path, json=body, headers=self._headers)
        except httpx.HTTPError:
            return False, _error(
                "server_unreachable",
                f"cannot reach agent-vault at {self.addr}",
                "Is the agent-vault server running? Check AGENT_VAULT_ADDR.",
            )
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = _error("bad_server_response", f"HTTP {r.status_code} without a JSON body", "")
        return r.status_code < 400, data


def result(ok: bool, data: dict[str, Any]) -> CallToolResult:
    """A tool answer: the JSON body as text and as structured content; a failure is an MCP tool error."""
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=data, is_error=not ok
    )


class _Server(MCPServer[Any]):
    """The SDK's server, except that arguments failing a tool's schema get the SPEC §6 body (field
    locations and pydantic's short messages) like every other tool error, instead of the SDK's text,
    which repeats the whole input (an agent may have put a credential value in it)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            answer: CallToolResult | InputRequiredResult = await super().call_tool(name, arguments, context)
        except ToolError as e:
            cause = e.__cause__
            if not isinstance(cause, ValidationError):
                raise
            return result(
                False,
                _error(
                    "invalid_request",
                    f"the arguments of tool {name} are invalid",
                    "Fix the fields listed (the tool's input schema describes them).",
                    fields=validation.fields(cause.errors(include_input=False)),
                ),
            )
        return answer


def build_server(api: AgentApi) -> MCPServer[Any]:
    """The MCPServer with the four tools (names as the issue writes them)."""
    server = _Server("agent-vault", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    async def discover() -> CallToolResult:
        """The services of your vault (host, path, methods, auth type, credential key names) and the
        unmatched-host policy. Never credential values."""
        ok, data = await api.call("GET", "/v1/discover")
        if ok:
            keep = ("vault", "role", "services", "available_credentials", "unmatched_policy")
            data = {k: data.get(k) for k in keep} | {"supported_auth_types": data.get("supported_auth_types")}
        return result(ok, data)

    async def propose(
        services: list[dict[str, Any]] | None = None,
        credentials: list[dict[str, Any]] | None = None,
        message: str | None = None,
    ) -> CallToolResult:
        """Ask a human for access: the body of POST /v1/proposals. `services`: [{action: "set",
        name, host, path?, methods?, auth: {type, token|key|...: KEY}}]; `credentials`: [{action:
        "set", key, description, obtain?}] (never values: the human enters them); `message`
        (optional, as in the API): why, for the human who reviews it."""
        body: dict[str, Any] = {"services": services or [], "credentials": credentials or []}
        if message is not None:
            body["message"] = message
        return result(*await api.call("POST", "/v1/proposals", body))

    async def proposal_status(id: int) -> CallToolResult:
        """One of your proposals: status (pending, applied, rejected, expired) and the review note."""
        if id < 1:
            return result(
                False,
                _error("invalid_request", "id must be a positive integer", "Use the id propose returned."),
            )
        ok, data = await api.call("GET", f"/v1/proposals/{id}")
        if not ok and data.get("error") == "not_found":
            data["hint"] = "Use the id that propose returned (GET /v1/proposals on the API lists yours)."
        return result(ok, data)

    async def list_holds() -> CallToolResult:
        """Your requests that are waiting for a human's approval (method, host, path, expiry)."""
        return result(*await api.call("GET", "/v1/holds"))

    for fn in (discover, propose, proposal_status, list_holds):
        server.add_tool(fn, name=fn.__name__)
    return server
