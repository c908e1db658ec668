"""`agent-vault mcp`: an MCP server over stdio for the agent running under `vault run` (issue 19).

It authenticates with `AGENT_VAULT_TOKEN` against `AGENT_VAULT_ADDR` (vault: `AGENT_VAULT_VAULT`), exactly
as `vault run` sets them, and offers four tools that call the agent-facing API:
* `discover`: the vault's services (hosts, paths, methods, auth types, key names), never values;
* `propose`: the body of `POST /v1/proposals` (`services`, `credentials`, `message`);
* `proposal_status`: one of the agent's proposals by id (status, review note);
* `list_holds`: the agent's own requests waiting for a human's approval.
A tool that fails returns an MCP tool error (`isError`) whose content is the SPEC §6 JSON body
(`error` code, `message`, `hint`), also as structured content, so the model can act on the hint.
Danger: stdout is the protocol channel; nothing else may print there. The token is never echoed.
"""

from __future__ import annotations

import os

from agent_vault.cli import app
from agent_vault.cli.client import DEFAULT_ADDR
from agent_vault.errors import InvalidRequest


@app.command("mcp")
def mcp_command() -> None:
    """Serve MCP over stdio for an agent under 'vault run' (tools: discover, propose, proposal_status,
    list_holds). Uses AGENT_VAULT_TOKEN, AGENT_VAULT_ADDR and AGENT_VAULT_VAULT."""
    token = os.environ.get("AGENT_VAULT_TOKEN", "")
    if not token:
        raise InvalidRequest(
            "AGENT_VAULT_TOKEN is not set",
            hint="Start the MCP host under 'agent-vault vault run -- ...', or set AGENT_VAULT_TOKEN.",
        )
    from agent_vault.cli.mcp_tools import AgentApi, build_server

    api = AgentApi(
        os.environ.get("AGENT_VAULT_ADDR") or DEFAULT_ADDR, token, os.environ.get("AGENT_VAULT_VAULT")
    )
    build_server(api).run("stdio")
