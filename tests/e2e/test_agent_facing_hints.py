"""Hints say what the reader can do next (SPEC §6), and the reader differs: an agent (an av_agt_/av_sess_
token, AGENT_VAULT_TOKEN) cannot log in, a CLI user names a vault with --vault (not an X-Vault header),
an HTTP caller has no command line, a narrowed session gains nothing from a role. Also the CLI's one-line
answers for a malformed hold id and for a set-but-rejected AGENT_VAULT_TOKEN (doctor, status).

One real server for the module (helpers.cli_fixtures.mserver), the real CLI against it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.cli_fixtures import assert_clean, mserver  # noqa: F401  (module fixture)
from helpers.server import OWNER_PASSWORD, ServerProc

LOGIN_HINT = "'agent-vault auth login'"


def _revoked_agent(server: ServerProc, name: str) -> str:
    token = server.make_agent(name)
    with server.http() as c:
        c.post(f"/v1/agents/{name}/revoke", json={"password": OWNER_PASSWORD}).raise_for_status()
    return token


def _as(server: ServerProc, token: str, **extra: str) -> dict[str, str]:
    return {**server.env, "AGENT_VAULT_ADDR": server.api, "AGENT_VAULT_TOKEN": token, **extra}


def test_a_rejected_agent_token_is_not_told_to_log_in(mserver: ServerProc) -> None:  # noqa: F811
    token = _revoked_agent(mserver, "hint-revoked")
    env = _as(mserver, token)
    for args, code in (
        (("vault", "discover"), 1),
        (("vault", "run", "--", "true"), 125),
        (("agent", "list"), 1),
    ):
        cp = mserver.cli(*args, env=env, check=False)
        assert cp.returncode == code, (args, cp.stderr)
        assert_clean(cp, token)
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert "AGENT_VAULT_TOKEN" in cp.stderr and "agent rotate" in cp.stderr, cp.stderr
        assert LOGIN_HINT not in cp.stderr, cp.stderr
    # the API itself: an agent or session bearer gets the agent's hint, a human's login the login hint
    for bearer in (token, "av_sess_" + "x" * 40):
        with mserver.http(bearer) as c:
            r = c.get("/v1/discover")
        assert r.status_code == 401
        assert "AGENT_VAULT_TOKEN" in r.json()["hint"] and LOGIN_HINT not in r.json()["hint"]
    with mserver.http("av_usr_" + "x" * 40) as c:
        r = c.get("/v1/vaults")
    assert r.status_code == 401 and LOGIN_HINT in r.json()["hint"]


def test_a_two_vault_agent_without_a_vault_is_told_the_cli_way(mserver: ServerProc) -> None:  # noqa: F811
    with mserver.http() as c:
        c.post("/v1/vaults", json={"name": "hint-second"}).raise_for_status()
    token = mserver.make_agent("hint-two", vaults=("default", "hint-second"))
    cp = mserver.cli("vault", "run", "--", "true", env=_as(mserver, token), check=False)
    assert cp.returncode == 125, cp.stderr
    assert_clean(cp, token)
    assert "AGENT_VAULT_VAULT" in cp.stderr and "--vault" in cp.stderr, cp.stderr
    assert "X-Vault" not in cp.stderr and "default, hint-second" in cp.stderr, cp.stderr


def test_api_hints_for_agents_and_http_callers(mserver: ServerProc) -> None:  # noqa: F811
    token = mserver.make_agent("hint-api")
    with mserver.http(token) as c:
        missing = c.get("/v1/proposals/999", headers={"X-Vault": "default"})
        invalid = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 3600,
                                               "unmatched_policy": "bogus"})  # fmt: skip
    assert missing.status_code == 404, missing.text
    assert "GET /v1/proposals" in missing.json()["hint"], missing.text
    assert "vault proposal list" not in missing.json()["hint"]
    # a value refused by the domain (not by the schema): the hint speaks of the request, not a command
    assert invalid.status_code == 422 and invalid.json()["error"] == "invalid_request", invalid.text
    assert "request body" in invalid.json()["hint"] and "command" not in invalid.json()["hint"]


def test_a_narrowed_session_asking_for_more_is_told_why(mserver: ServerProc) -> None:  # noqa: F811
    for name in ("hint-a", "hint-b"):
        mserver.add_service(
            {"name": name, "host": f"{name}.example.com", "auth": {"type": "bearer", "token": "HINT_KEY"}}
        )
    token = mserver.make_agent("hint-narrow")
    with mserver.http(token) as c:
        r = c.post("/v1/sessions", json={"vault": "default", "ttl_seconds": 600, "only_services": ["hint-a"]})
        assert r.status_code == 201, r.text
    with mserver.http(r.json()["token"]) as c:
        wider = c.post(
            "/v1/sessions", json={"vault": "default", "ttl_seconds": 300, "only_services": ["hint-b"]}
        )
    assert wider.status_code == 403, wider.text
    hint = wider.json()["hint"]
    assert "narrowed session" in hint and "hint-a" in hint and "role" not in hint, hint


@pytest.mark.parametrize("verb", ["deny", "approve"])
def test_a_malformed_hold_id_is_no_pending_hold(mserver: ServerProc, verb: str) -> None:  # noqa: F811
    extra = ("--password-stdin",) if verb == "approve" else ()  # the id is checked before the password
    cp = mserver.cli("vault", "hold", verb, "nonexist", *extra, input="x\n", check=False)
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.startswith("error: no pending hold nonexist in vault default"), cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1 and "Fix the fields" not in cp.stderr


def test_doctor_and_status_with_a_rejected_agent_token(mserver: ServerProc) -> None:  # noqa: F811
    token = _revoked_agent(mserver, "hint-doctor")
    env = _as(mserver, token)
    cp = mserver.cli("--json", "doctor", env=env, check=False)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert_clean(cp, token)
    rows: dict[str, Any] = {r["check"]: r for r in json.loads(cp.stdout)["checks"]}
    assert rows["login"]["status"] == "fail", rows["login"]
    assert "AGENT_VAULT_TOKEN" in rows["login"]["detail"]
    st = mserver.cli("status", env=env)
    assert_clean(st, token)
    assert "the token from AGENT_VAULT_TOKEN was rejected" in st.stdout, st.stdout
