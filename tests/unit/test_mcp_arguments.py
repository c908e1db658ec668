"""`agent-vault mcp` in process (the SDK's in-memory client, a fake agent-facing API): `propose` takes the
API's body, `message` optional as in POST /v1/proposals; arguments that fail a tool's schema come back as
the SPEC §6 body (error, message, hint, fields) like every other tool error, never echoing the input
(an agent may have put a credential value in it). The real command runs in tests/e2e/test_mcp.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mcp import Client

from agent_vault.cli.mcp_tools import build_server

LEAK = "leakme-sk-0123456789"


class FakeApi:
    def __init__(self, answer: tuple[bool, dict[str, Any]] = (True, {"id": 7, "status": "pending"})) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.answer = answer

    async def call(self, method: str, path: str, body: Any = None) -> tuple[bool, dict[str, Any]]:
        self.calls.append((method, path, body))
        return self.answer


def _call(api: FakeApi, tool: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any], str]:
    async def go() -> tuple[bool, dict[str, Any], str]:
        async with Client(build_server(api)) as c:  # type: ignore[arg-type]
            res = await c.call_tool(tool, args)
        text = res.content[0].text  # type: ignore[union-attr]
        return not res.is_error, json.loads(text), text

    return asyncio.run(go())


def test_propose_without_a_message_is_the_apis_body() -> None:
    api = FakeApi()
    creds = [{"action": "set", "key": "STRIPE_KEY", "description": "Stripe"}]
    ok, data, _ = _call(api, "propose", {"credentials": creds})
    assert ok and data["id"] == 7
    assert api.calls == [("POST", "/v1/proposals", {"services": [], "credentials": creds})]
    _call(api, "propose", {"credentials": creds, "message": "need it"})
    assert api.calls[-1][2]["message"] == "need it"


def test_bad_arguments_get_the_spec_body_without_the_input() -> None:
    api = FakeApi()
    for tool, args, loc in (
        ("propose", {"services": f"not a list {LEAK}", "value": LEAK}, "services"),
        ("propose", {"credentials": [{"key": "K", "value": LEAK}], "message": 5}, "message"),
        ("proposal_status", {"id": LEAK}, "id"),
    ):
        ok, data, text = _call(api, tool, args)
        assert not ok
        assert data["error"] == "invalid_request" and data["hint"] and tool in data["message"]
        assert [f["loc"] for f in data["fields"]] == [loc]
        assert LEAK not in text and "input_value" not in text
    assert api.calls == []  # nothing reached the API


def test_an_unknown_proposal_points_to_the_agents_own_list() -> None:
    api = FakeApi((False, {"error": "not_found", "message": "proposal 999 not found in vault default",
                           "hint": "List them with 'agent-vault vault proposal list'."}))  # fmt: skip
    ok, data, _ = _call(api, "proposal_status", {"id": 999})
    assert not ok and data["error"] == "not_found"
    assert "GET /v1/proposals" in data["hint"] and "vault proposal list" not in data["hint"]
