"""Proposals end to end: the real server, a real HTTPS upstream, the real CLI.

An agent is denied, proposes the service, a human approves it with the CLI (value from the environment), and
the very next proxied request is injected. Rejections, expired or used links, link-only approval attempts,
agent approval attempts, the pending limit and values in proposals are refused. No value leaks anywhere.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

SECRET = "sk-approved-by-a-human-7f3a9c"
OTHER_SECRET = "sk-never-stored-4c1d2e"


def _deny_unmatched(server: ServerProc) -> None:
    with server.http() as c:
        r = c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "deny"})
        assert r.status_code == 200, r.text


def _cli_login(server: ServerProc) -> None:
    server.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")


def _approve_cli(server: ServerProc, pid: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return server.cli(
        "vault",
        "proposal",
        "approve",
        pid,
        "--password-stdin",
        "--yes",
        *extra,
        input=OWNER_PASSWORD + "\n",
        env=env,
        check=False,
    )


def _service(upstream: TLSUpstream, name: str, key: str) -> dict[str, Any]:
    return {
        "action": "set",
        "name": name,
        "host": "localhost",
        "port": upstream.port,
        "path": f"/{name}",
        "auth": {"type": "bearer", "token": key},
    }


def test_denied_agent_proposes_human_approves_with_cli_then_injected(
    server: ServerProc, upstream: TLSUpstream
) -> None:
    _deny_unmatched(server)
    token = server.make_agent("research-bot")
    agent = server.http(token)
    url = f"https://localhost:{upstream.port}/echo-api/hello"
    bodies: list[str] = []
    with httpx.Client(proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False) as px:
        r = px.get(url)
        assert r.status_code == 403 and r.json()["error"] == "service_not_allowed"
        hint = r.json()["proposal_hint"]
        assert hint["endpoint"] == "POST /v1/proposals" and hint["port"] == upstream.port
        assert upstream.requests_seen.wait_for(0) == []  # denied: the upstream was never contacted

        created = agent.post(
            "/v1/proposals",
            json={
                "services": [_service(upstream, "echo-api", "ECHO_TOKEN")],
                "credentials": [{"action": "set", "key": "ECHO_TOKEN", "description": "echo API token"}],
                "message": "Need the echo API for the report",
            },
        )
        assert created.status_code == 201, created.text
        bodies.append(created.text)
        proposal = created.json()
        assert proposal["id"] == 1 and proposal["status"] == "pending"
        assert proposal["approval_url"].startswith(f"{server.api}/ui/approve/default/1?token=av_appr_")

        _cli_login(server)
        listing = server.cli("vault", "proposal", "list", "--status", "pending", "--json")
        pending = json.loads(listing.stdout)["proposals"]
        assert [(p["id"], p["services"], p["credentials"]) for p in pending] == [
            (1, ["echo-api"], ["ECHO_TOKEN"])
        ]
        shown = server.cli("vault", "proposal", "show", "1")
        assert "+ echo-api (add)" in shown.stdout and "[value needed]" in shown.stdout
        # without a value source the CLI refuses (stdin carries the password) and explains the flags
        refused = _approve_cli(server, "1")
        assert refused.returncode == 1 and "ECHO_TOKEN" in refused.stderr
        assert "--value-from-env" in refused.stderr
        approved = _approve_cli(
            server,
            "1",
            "--value-from-env",
            "ECHO_TOKEN=ECHO_VALUE",
            "--note",
            "go ahead",
            env={**server.env, "ECHO_VALUE": SECRET},
        )
        assert approved.returncode == 0 and "proposal 1 applied" in approved.stdout, approved.stderr
        cli_output = listing.stdout + shown.stdout + refused.stderr + approved.stdout + approved.stderr

        r = px.get(url, headers={"Authorization": "Bearer agent-placeholder"})
        assert r.status_code == 200, r.text
        seen = dict((k.lower(), v) for k, v in upstream.requests_seen.wait_for(1)[-1]["headers"])
        assert seen["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in r.text
        bodies.append(r.text)

    status = agent.get("/v1/proposals/1")
    assert status.json()["status"] == "applied" and status.json()["review_note"] == "go ahead"
    # the link is dead once the proposal is decided
    link = proposal["approval_url"].split("?token=")[1]
    reused = httpx.get(f"{server.api}/v1/vaults/default/proposals/1", params={"token": link})
    assert reused.status_code == 401
    again = _approve_cli(server, "1")
    assert again.returncode == 1 and "not pending" in again.stderr
    with server.http() as owner:
        for path in (
            "/v1/vaults/default/proposals",
            "/v1/vaults/default/proposals/1",
            "/v1/vaults/default/credentials",
            "/v1/vaults/default/services",
            "/v1/audit",
        ):
            r = owner.get(path)
            assert r.status_code == 200, path
            bodies.append(r.text)
        assert '"kind":"proposal.approve"' in r.text.replace(" ", "")
    bodies += [status.text, reused.text]
    agent.close()
    assert server.stop() == 0
    for text in [*bodies, cli_output, server.stderr_text()]:
        assert SECRET not in text
    assert SECRET.encode() not in (server.home / "agent-vault.db").read_bytes()


def test_rejections_links_and_refusals(server: ServerProc, upstream: TLSUpstream) -> None:
    _deny_unmatched(server)
    token = server.make_agent("eager-bot")
    agent = server.http(token)
    bodies: list[str] = []

    def propose(body: dict[str, Any]) -> httpx.Response:
        r = agent.post("/v1/proposals", json=body)
        bodies.append(r.text)
        return r

    reject_me = propose(
        {
            "services": [_service(upstream, "nope-api", "NOPE_KEY")],
            "credentials": [{"key": "NOPE_KEY"}],
            "message": "please",
        }
    ).json()
    _cli_login(server)
    server.cli("vault", "proposal", "reject", str(reject_me["id"]), "--reason", "use the staging API")
    seen = agent.get(f"/v1/proposals/{reject_me['id']}").json()
    assert seen["status"] == "rejected" and seen["review_note"] == "use the staging API"
    with server.http() as owner:
        assert owner.get("/v1/vaults/default/services").json()["services"] == []
        assert owner.get("/v1/vaults/default/credentials").json()["credentials"] == []

    # an expired approval link no longer shows the proposal to an unauthenticated browser
    expiring = propose({"credentials": [{"key": "LATER_KEY"}]}).json()
    link = expiring["approval_url"].split("?token=")[1]
    anon = httpx.Client(base_url=server.api, trust_env=False)
    path = f"/v1/vaults/default/proposals/{expiring['id']}"
    assert anon.get(path, params={"token": link}).status_code == 200
    db = sqlite3.connect(server.home / "agent-vault.db")
    db.execute(
        "UPDATE proposals SET approval_expires_at = '2000-01-01 00:00:00.000000' WHERE seq = ?",
        (expiring["id"],),
    )
    db.commit()
    db.close()
    r = anon.get(path, params={"token": link})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    used_link = reject_me["approval_url"].split("?token=")[1]
    used = anon.get(f"/v1/vaults/default/proposals/{reject_me['id']}", params={"token": used_link})
    assert used.status_code == 401

    # the approval URL alone (no login) cannot approve, and neither can the proposing agent
    fresh = propose({"credentials": [{"key": "FRESH_KEY"}]}).json()
    approve_body = {"password": OWNER_PASSWORD, "credentials": {"FRESH_KEY": OTHER_SECRET}}
    fpath = f"/v1/vaults/default/proposals/{fresh['id']}/approve"
    r = anon.post(fpath, params={"token": fresh["approval_url"].split("?token=")[1]}, json=approve_body)
    assert r.status_code == 401
    r = agent.post(fpath, json=approve_body)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert agent.post(f"/v1/vaults/default/proposals/{fresh['id']}/reject", json={}).status_code == 403
    bodies.append(r.text)
    assert agent.get(f"/v1/proposals/{fresh['id']}").json()["status"] == "pending"

    # values are never accepted from agents
    r = propose({"credentials": [{"key": "LEAKY_KEY", "value": OTHER_SECRET}]})
    assert r.status_code == 400 and r.json()["error"] == "value_not_allowed"

    # at most 20 pending per vault
    pending = len(agent.get("/v1/proposals", params={"status": "pending"}).json()["proposals"])
    for i in range(20 - pending):
        assert propose({"credentials": [{"key": f"SLOT_{i}"}]}).status_code == 201
    r = propose({"credentials": [{"key": "ONE_TOO_MANY"}]})
    assert r.status_code == 429 and r.json()["error"] == "too_many_pending_proposals"

    anon.close()
    agent.close()
    assert server.stop() == 0
    for text in [*bodies, server.stderr_text()]:
        assert OTHER_SECRET not in text
    assert OTHER_SECRET.encode() not in (server.home / "agent-vault.db").read_bytes()


def test_cli_review_warnings_stale_proposals_and_agents_reading_their_own(server: ServerProc) -> None:
    """The real CLI: `proposal show` and approve's preview print every server warning and what an update
    changes (`--json` unchanged: the API's answer); a proposal the vault has overtaken is shown out of
    date and approving it says to reject it (409); an agent token lists and shows its own proposals."""
    server.set_credential("B_KEY", OTHER_SECRET)
    server.add_service(
        {
            "name": "beta",
            "host": "beta.example.com",
            "port": 443,
            "auth": {"type": "bearer", "token": "B_KEY"},
        }
    )
    server.add_service(
        {"name": "stripe", "host": "api.stripe.com", "auth": {"type": "bearer", "token": "B_KEY"}}
    )
    token = server.make_agent("widen-bot")
    agent = server.http(token)
    risky = {"action": "set", "name": "beta", "host": "beta.example.com", "allow_http": True}
    risky |= {"redact_response": False, "auth": {"type": "bearer", "token": "B_KEY"}}
    assert agent.post("/v1/proposals", json={"services": [risky], "message": "widen"}).status_code == 201
    drop = {"services": [{"action": "delete", "name": "stripe"}]}
    assert agent.post("/v1/proposals", json=drop).status_code == 201
    human = {**server.env, "AGENT_VAULT_TOKEN": server.owner_token}

    shown = server.cli("vault", "proposal", "show", "1", env=human).stdout
    lines = shown.splitlines()
    assert (
        "    warning: beta: allow_http: its credentials would also be sent over unencrypted http://" in lines
    )
    assert any(line.startswith("    warning: beta: redact_response: false") for line in lines), shown
    assert "      port: 443 -> any port" in lines and "      allow_http: no -> yes" in lines, shown
    as_json = json.loads(server.cli("--json", "vault", "proposal", "show", "1", env=human).stdout)
    with server.http() as owner:
        assert as_json == owner.get("/v1/vaults/default/proposals/1").json()
    assert (
        len(as_json["changes"]["services"][0]["warnings"]) == 2
        and as_json["changes"]["services"][0]["before"]
    )
    preview = server.cli(
        "vault", "proposal", "approve", "1", "--password-stdin", input="wrong\n", env=human, check=False
    )
    assert "warning: beta: allow_http" in preview.stderr and "port: 443 -> any port" in preview.stderr

    with server.http() as owner:
        r = owner.request("DELETE", "/v1/vaults/default/services/stripe", json={"password": OWNER_PASSWORD})
        assert r.status_code == 204, r.text
    stale = server.cli("vault", "proposal", "show", "2", env=human).stdout
    assert "OUT OF DATE: service stripe no longer exists" in stale, stale
    refused = _approve_cli(server, "2", env=human)
    assert refused.returncode == 1, refused.stderr
    err = refused.stderr.splitlines()[-1]
    assert err.startswith("error: proposal 2 is out of date: service stripe no longer exists"), err
    assert "agent-vault vault proposal reject 2" in err and "Check the command's arguments" not in err
    with server.http() as owner:  # the server refuses it the same way when asked directly
        r = owner.post("/v1/vaults/default/proposals/2/approve", json={"password": OWNER_PASSWORD})
        assert r.status_code == 409 and "out of date" in r.json()["message"]

    as_agent = {**server.env, "AGENT_VAULT_TOKEN": token}
    listed = server.cli("--json", "vault", "proposal", "list", env=as_agent, check=False)
    assert listed.returncode == 0, listed.stderr
    assert [p["id"] for p in json.loads(listed.stdout)["proposals"]] == [1, 2]
    table = server.cli("vault", "proposal", "list", "--status", "pending", env=as_agent, check=False)
    assert table.returncode == 0 and "widen" in table.stdout, table.stderr
    mine = server.cli("vault", "proposal", "show", "2", env=as_agent, check=False)
    assert mine.returncode == 0, mine.stderr
    assert "proposal 2 in vault default: pending" in mine.stdout and "- stripe (delete)" in mine.stdout
    assert "OUT OF DATE: service stripe no longer exists" in mine.stdout
    assert server.cli("vault", "proposal", "show", "1", env=as_agent, check=False).returncode == 0
    agent.close()
    for text in (shown, stale, preview.stdout, preview.stderr, refused.stderr, mine.stdout, table.stdout):
        assert OTHER_SECRET not in text
