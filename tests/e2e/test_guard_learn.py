"""Learn mode (issue #20), end to end: with `--enforcement learn` (and the `deny` policy) requests to
unknown hosts go through and are audited `would_deny`; one draft proposal per host appears with the
request count and methods seen (auth guessed from the catalog for a known host), `vault proposal
list --status draft` shows them, and approving a draft is the normal flow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from helpers.proxy import wait_audit
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import DEFAULT_HOSTNAMES, TLSUpstream
from helpers.wait import wait_until

RESOLVE = "other.upstream.test=127.0.0.1,api.openai.com=127.0.0.1"


@pytest.fixture(scope="module")
def up(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca, hostnames=(*DEFAULT_HOSTNAMES, "api.openai.com")) as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("learn"), upstream_ca, env={"AGENT_VAULT_RESOLVE": RESOLVE}) as s:
        s.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
        s.cli(
            "vault",
            "settings",
            "--enforcement",
            "LEARN",
            "--unmatched-policy",
            "deny",
            "--password-stdin",
            input=OWNER_PASSWORD + "\n",
        )
        yield s


def _drafts(srv: ServerProc) -> list[dict[str, Any]]:
    with srv.http() as c:
        r = c.get("/v1/vaults/default/proposals", params={"status": "draft"})
        r.raise_for_status()
        return list(r.json()["proposals"])


def _full(srv: ServerProc, pid: int) -> dict[str, Any]:
    with srv.http() as c:
        return dict(c.get(f"/v1/vaults/default/proposals/{pid}").json())


def test_unknown_hosts_pass_and_become_one_draft_each(srv: ServerProc, up: TLSUpstream) -> None:
    token = srv.make_agent("learner-bot")
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
    ) as c:
        assert c.get(f"https://other.upstream.test:{up.port}/echo/a").status_code == 200
        assert c.post(f"https://other.upstream.test:{up.port}/echo/b", content=b"{}").status_code == 200
        assert c.get(f"https://api.openai.com:{up.port}/echo/models").status_code == 200
    rec = wait_audit(srv.home, host="other.upstream.test", path="/echo/a")
    assert rec["decision"] == "would_deny" and rec["would_deny_code"] == "service_not_allowed"
    drafts = wait_until(lambda: len(_drafts(srv)) == 2 and _drafts(srv), "two drafts", timeout=10)
    by_host = {}
    for d in drafts:
        full = _full(srv, d["id"])
        by_host[full["services"][0]["host"]] = full
    other = by_host["other.upstream.test"]
    assert other["status"] == "draft" and other["actor"] == "learn-mode"
    assert other["message"] == f"learn mode: 2 requests to other.upstream.test:{up.port} (methods: GET, POST)"
    assert other["services"][0]["auth"] == {"type": "passthrough"}
    openai = by_host["api.openai.com"]
    assert openai["services"][0]["auth"] == {"type": "bearer", "token": "OPENAI_API_KEY"}
    assert [c["key"] for c in openai["credentials"]] == ["OPENAI_API_KEY"]

    # more traffic updates the same draft instead of filing another
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
    ) as c:
        assert c.delete(f"https://other.upstream.test:{up.port}/echo/c").status_code == 200
    wait_until(
        lambda: "3 requests" in _full(srv, other["id"])["message"], "the draft's count updated", timeout=10
    )
    assert "DELETE, GET, POST" in _full(srv, other["id"])["message"] and len(_drafts(srv)) == 2

    listed = srv.cli("--json", "vault", "proposal", "list", "--status", "draft")
    assert {p["id"] for p in json.loads(listed.stdout)["proposals"]} == {d["id"] for d in drafts}

    srv.cli(
        "vault",
        "proposal",
        "approve",
        str(other["id"]),
        "--yes",
        "--password-stdin",
        input=OWNER_PASSWORD + "\n",
    )
    assert _full(srv, other["id"])["status"] == "applied"
    with srv.http() as c:
        names = [s["name"] for s in c.get("/v1/vaults/default/services").json()["services"]]
    assert other["services"][0]["name"] in names
