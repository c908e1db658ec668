"""`agent-vault mcp` end to end (issue 19): the MCP SDK's own stdio client drives the real command
against the real server, as an MCP host under `vault run` would.

The agent discovers its vault, proposes a service, learns that a human approved it, sees its held
request, and gets SPEC §6 codes and hints as tool errors. Never a value in any tool answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until
from mcp import ClientSession, StdioServerParameters, stdio_client

SECRET = "sk-mcp-never-in-a-tool-answer-91e2"

Tools = Callable[[str, dict[str, Any]], Awaitable[tuple[bool, dict[str, Any]]]]


async def _with_mcp(env: dict[str, str], body: Callable[[Tools], Awaitable[None]]) -> list[str]:
    """Start `agent-vault mcp` with `env` through the SDK's stdio client; returns every tool answer text."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_vault", "mcp"], env=env)
    texts: list[str] = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = sorted(t.name for t in (await session.list_tools()).tools)
        assert names == ["discover", "list_holds", "proposal_status", "propose"]

        async def call(name: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            res = await session.call_tool(name, args)
            text = res.content[0].text  # type: ignore[union-attr]
            texts.append(text)
            assert json.loads(text) == res.structured_content
            return not res.is_error, json.loads(text)

        await body(call)
    return texts


def _session_env(server: ServerProc, token: str) -> dict[str, str]:
    with server.http(token) as c:
        r = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 3600})
        assert r.status_code == 201, r.text
    return {**server.env, "AGENT_VAULT_TOKEN": r.json()["token"], "AGENT_VAULT_ADDR": server.api,
            "AGENT_VAULT_VAULT": "default"}  # fmt: skip


def test_discover_propose_and_learn_the_outcome(server: ServerProc, upstream: TLSUpstream) -> None:
    server.set_credential("GH_TOKEN", SECRET)
    server.add_service(
        {"name": "github", "host": "localhost", "port": upstream.port, "path": "/gh",
         "auth": {"type": "bearer", "token": "GH_TOKEN"}}
    )  # fmt: skip
    env = _session_env(server, server.make_agent("mcp-bot"))
    seen: dict[str, Any] = {}

    async def agent(call: Tools) -> None:
        ok, found = await call("discover", {})
        assert ok and found["vault"] == "default"
        assert [(s["name"], s["auth_type"], s["placeholders"]) for s in found["services"]] == [
            ("github", "bearer", ["GH_TOKEN"])
        ]
        assert found["available_credentials"] == ["GH_TOKEN"]
        ok, made = await call(
            "propose",
            {
                "services": [
                    {"action": "set", "name": "stripe", "host": "api.stripe.com",
                     "auth": {"type": "bearer", "token": "STRIPE_KEY"}}
                ],
                "credentials": [{"action": "set", "key": "STRIPE_KEY", "description": "test key"}],
                "message": "Need Stripe for a refund",
            },
        )  # fmt: skip
        assert ok and made["status"] == "pending" and made["approval_url"].startswith(server.api)
        ok, status = await call("proposal_status", {"id": made["id"]})
        assert ok and status["status"] == "pending"
        # a human approves from the CLI while the conversation goes on
        await asyncio.to_thread(
            server.cli, "vault", "proposal", "approve", str(made["id"]), "--password-stdin", "--yes",
            "--value-from-env", "STRIPE_KEY=STRIPE_VALUE", input=OWNER_PASSWORD + "\n",
            env={**server.env, "STRIPE_VALUE": "sk-stripe-approved-value-3c1f"},
        )  # fmt: skip
        ok, status = await call("proposal_status", {"id": made["id"]})
        assert ok and status["status"] == "applied"
        ok, err = await call("proposal_status", {"id": 99})
        assert not ok and err["error"] == "not_found" and "hint" in err
        ok, err = await call(
            "propose", {"message": "x", "credentials": [{"action": "set", "key": "bad key"}]}
        )
        assert not ok and err["error"] == "invalid_request" and err["hint"]
        ok, holds = await call("list_holds", {})
        assert ok and holds == {"holds": []}
        seen["done"] = True

    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    texts = asyncio.run(_with_mcp(env, agent))
    assert seen["done"]
    assert not any(SECRET in t or "sk-stripe-approved" in t for t in texts)


def test_list_holds_shows_the_agents_held_request(server: ServerProc, upstream: TLSUpstream) -> None:
    server.set_credential("PAY_TOKEN", SECRET)
    server.add_service(
        {"name": "payments", "host": "localhost", "port": upstream.port,
         "auth": {"type": "bearer", "token": "PAY_TOKEN"}, "approval": {"methods": ["POST"]}}
    )  # fmt: skip
    token = server.make_agent("pay-bot")
    env = _session_env(server, token)

    def held_post() -> int:
        with httpx.Client(proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False,
                          timeout=60) as c:  # fmt: skip
            return c.post(f"https://localhost:{upstream.port}/echo/charge", content=b"{}").status_code

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(held_post)

        def pending() -> list[Any]:
            with server.http() as c:
                return list(c.get("/v1/vaults/default/holds").json()["holds"])

        [hold] = wait_until(pending, "the held request")

        async def agent(call: Tools) -> None:
            ok, holds = await call("list_holds", {})
            assert ok and [(h["id"], h["method"], h["path"]) for h in holds["holds"]] == [
                (hold["id"], "POST", "/echo/charge")
            ]

        asyncio.run(_with_mcp(env, agent))
        with server.http() as c:
            c.post(f"/v1/vaults/default/holds/{hold['id']}/deny", json={}).raise_for_status()
        assert fut.result(timeout=30) == 403


def test_without_a_token_it_exits_with_one_line(server: ServerProc) -> None:
    cp = server.cli("mcp", check=False, env={**server.env, "AGENT_VAULT_TOKEN": ""})
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.startswith("error: AGENT_VAULT_TOKEN is not set") and "Traceback" not in cp.stderr


def test_an_mcp_host_under_vault_run(server: ServerProc, tmp_path: Path) -> None:
    """`vault run -- HOST` where HOST starts `agent-vault mcp` with the environment vault run gives it."""
    host = tmp_path / "host.py"
    host.write_text(
        textwrap.dedent(
            """
            import asyncio, os, sys
            from mcp import ClientSession, StdioServerParameters, stdio_client

            async def main():
                params = StdioServerParameters(command=sys.executable, args=["-m", "agent_vault", "mcp"],
                                               env=dict(os.environ))
                async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
                    await s.initialize()
                    res = await s.call_tool("discover", {})
                    print(res.content[0].text)

            asyncio.run(main())
            """
        )
    )
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    cp = server.cli("vault", "run", "--", sys.executable, str(host))
    found = json.loads(cp.stdout.strip().splitlines()[-1])
    assert found["vault"] == "default" and found["role"] == "proxy"
