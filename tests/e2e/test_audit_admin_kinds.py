"""SPEC §12 / §14.12: every admin mutation leaves exactly one audit record of its SPEC kind.

The owner does each mutation the control API offers once, in an order that makes each possible, against
the real server; after each, the audit log (read through `GET /v1/audit` after a flush) holds exactly one
new admin record, of the expected kind, with the SPEC fields and no value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.server import OWNER_PASSWORD, ServerProc

ADMIN_FIELDS = {"seq", "ts", "kind", "actor", "vault", "target", "details", "prev_hash", "hash"}


@pytest.fixture
def rserver(tmp_path: Path, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    with ServerProc(tmp_path, upstream_ca, extra_args=("--rate-limits", "off")) as s:
        yield s


def all_records(server: ServerProc) -> list[dict[str, Any]]:
    """Every record, oldest first, after the audit queue was flushed (`POST /v1/audit/verify`)."""
    out: list[dict[str, Any]] = []
    with server.http() as c:
        assert c.post("/v1/audit/verify").status_code == 200
        while True:
            after = out[-1]["seq"] if out else 0
            page = c.get("/v1/audit", params={"after_seq": after, "limit": 1000}).json()["records"]
            out += page
            if len(page) < 1000:
                return out


def test_every_admin_mutation_leaves_exactly_one_record(rserver: ServerProc) -> None:
    """SPEC §12 / §14.12: each admin mutation the API offers, done once by the owner, adds exactly one
    record of its SPEC kind, naming its target and no value (a mutation acknowledged with a 2xx is
    durable: its record is there when the answer arrives)."""
    server, pw, value = rserver, OWNER_PASSWORD, "sk-admin-audit-value-0001"
    c = server.http()
    state: dict[str, str] = {}

    def call(method: str, path: str, body: Any = None, token: str | None = None) -> dict[str, Any]:
        client = server.http(token) if token else c
        r = client.request(method, path, json=body, headers={"X-Vault": "default"} if token else None)
        assert r.is_success, (method, path, r.status_code, r.text)
        return r.json() if r.content else {}

    def invite() -> None:
        body = {"password": pw, "email": "audited@example.com", "role": "member", "vaults": []}
        state["invite"] = call("POST", "/v1/users/invites", body)["token"]

    def propose() -> None:
        body = {"credentials": [{"action": "set", "key": "P_KEY"}], "message": "need it"}
        state["pid"] = str(call("POST", "/v1/proposals", body, token=state["member_token"])["id"])

    def session() -> None:
        state["sid"] = str(call("POST", "/v1/sessions", {"vault": "default", "agent": "minion"})["id"])

    agent_body = {"password": pw, "name": "minion", "vaults": [{"vault": "default", "role": "member"}]}
    svc = {"name": "audited-api", "host": "api.upstream.test", "auth": {"type": "bearer", "token": "K"}}
    d, k, email = "/v1/vaults/default", "/v1/vaults/default/credentials/K", "/v1/users/audited@example.com"
    second = {"password": pw, "unmatched_policy": "deny"}
    steps: list[tuple[str, Any]] = [
        ("vault.create", lambda: call("POST", "/v1/vaults", {"name": "second"})),
        ("vault.settings", lambda: call("PATCH", "/v1/vaults/second", second)),
        ("credential.set", lambda: call("PUT", k, {"value": value})),
        ("credential.rotate", lambda: call("POST", f"{k}/rotate", {"value": value + "2"})),
        ("credential.reveal", lambda: call("POST", f"{k}/reveal", {"password": pw})),
        ("service.add", lambda: call("POST", f"{d}/services", {"password": pw, "service": svc})),
        (
            "service.update",
            lambda: call("PATCH", f"{d}/services/audited-api", {"password": pw, "enabled": False}),
        ),
        ("service.remove", lambda: call("DELETE", f"{d}/services/audited-api", {"password": pw})),
        (
            "service.import",
            lambda: call("PUT", "/v1/vaults/second/services", {"password": pw, "services": [svc]}),
        ),
        ("agent.create", lambda: state.update(member_token=call("POST", "/v1/agents", agent_body)["token"])),
        ("proposal.create", propose),
        ("proposal.reject", lambda: call("POST", f"{d}/proposals/{state['pid']}/reject", {"reason": "no"})),
        (
            "agent.grant",
            lambda: call("PUT", "/v1/vaults/second/agents/minion", {"password": pw, "role": "proxy"}),
        ),
        ("session.create", session),
        ("session.revoke", lambda: call("DELETE", f"/v1/sessions/{state['sid']}")),
        ("agent.rotate", lambda: call("POST", "/v1/agents/minion/rotate", {"password": pw})),
        ("agent.revoke", lambda: call("POST", "/v1/agents/minion/revoke")),
        ("agent.delete", lambda: call("DELETE", "/v1/agents/minion")),
        ("user.invite", invite),
        (
            "user.accept",
            lambda: call("POST", f"/v1/invites/{state['invite']}/accept", {"password": "audited-pw-1"}),
        ),
        ("user.role", lambda: call("PATCH", email, {"password": pw, "role": "owner"})),
        ("user.remove", lambda: call("DELETE", email, {"password": pw})),
        ("credential.delete", lambda: call("DELETE", k)),
        ("ca.rotate", lambda: call("POST", "/v1/ca/rotate", {"password": pw})),
        ("vault.delete", lambda: call("DELETE", "/v1/vaults/second", {"password": pw})),
    ]
    with c:
        for kind, step in steps:
            before = len(all_records(server))
            step()
            new = all_records(server)[before:]
            admin = [r for r in new if not r["kind"].startswith(("proxy.", "auth."))]
            assert [r["kind"] for r in admin] == [kind], (kind, new)
            actor = "agent:minion" if kind == "proposal.create" else "user:"  # the agent proposes
            assert set(admin[0]) == ADMIN_FIELDS and admin[0]["actor"].startswith(actor), admin[0]
            assert value not in json.dumps(admin[0]), admin[0]
