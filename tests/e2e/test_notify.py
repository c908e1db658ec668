"""Webhook notifications (issue 19) from the real server to local HTTPS receivers (trustme, loopback).

`proposal.created`, `hold.created` and `hold.decided` arrive as JSON (names, ids, links; never values
or tokens); a Slack webhook URL gets a `text` body; a receiver that is down is retried and reported in
the log while the proxy keeps answering; without `--allow-net` the egress guard refuses a loopback URL.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import trustme
from helpers.proxy import free_port
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

SECRET = "sk-notify-never-in-an-event-8d2c"


def _events(receiver: TLSUpstream, n: int) -> list[dict[str, Any]]:
    seen = receiver.requests_seen.wait_for(n, timeout=15)
    return [json.loads(r["body"]) for r in seen]


def test_events_reach_json_and_slack_receivers_and_a_dead_one_is_retried(
    tmp_path: Path, upstream_ca: trustme.CA, upstream: TLSUpstream
) -> None:
    dead = free_port()
    with (
        TLSUpstream(ca=upstream_ca) as hook,
        TLSUpstream(ca=upstream_ca, hostnames=("hooks.slack.com",)) as slack,
    ):
        urls = [
            f"https://localhost:{hook.port}/echo/hook",
            f"https://hooks.slack.com:{slack.port}/echo/services/T000/B000/not-a-real-secret",
            f"https://127.0.0.1:{dead}/down",
        ]
        env = {"AGENT_VAULT_NOTIFY_URL": ",".join(urls), "AGENT_VAULT_RESOLVE": "hooks.slack.com=127.0.0.1"}
        with ServerProc(tmp_path, upstream_ca, env=env) as server:
            server.set_credential("PAY_TOKEN", SECRET)
            server.add_service(
                {"name": "payments", "host": "localhost", "port": upstream.port,
                 "auth": {"type": "bearer", "token": "PAY_TOKEN"}, "approval": {"methods": ["POST"]}}
            )  # fmt: skip
            token = server.make_agent("pay-bot")
            with server.http(token) as agent:
                made = agent.post(
                    "/v1/proposals",
                    json={"credentials": [{"action": "set", "key": "NEW_KEY"}], "message": "need it"},
                )
                assert made.status_code == 201, made.text
            [created] = _events(hook, 1)
            assert created["event"] == "proposal.created" and created["vault"] == "default"
            assert created["data"]["id"] == 1 and created["data"]["actor"] == "agent:pay-bot"
            assert created["data"]["credentials"] == ["NEW_KEY"]
            page = created["links"]["approval_page"]
            assert page == f"{server.api}/ui/approve/default/1" and "token" not in page

            def held_post() -> int:
                with httpx.Client(proxy=server.proxy_url(token), verify=str(server.ca_bundle),
                                  trust_env=False, timeout=60) as c:  # fmt: skip
                    return c.post(f"https://localhost:{upstream.port}/echo/pay", content=b"{}").status_code

            with ThreadPoolExecutor(1) as pool:
                fut = pool.submit(held_post)
                hold_event = _events(hook, 2)[1]
                assert hold_event["event"] == "hold.created"
                hold = hold_event["data"]
                assert (hold["method"], hold["host"], hold["path"], hold["agent"]) == (
                    "POST", "localhost", "/echo/pay", "agent:pay-bot"
                )  # fmt: skip
                started = time.monotonic()
                with httpx.Client(proxy=server.proxy_url(token), verify=str(server.ca_bundle),
                                  trust_env=False, timeout=10) as c:  # fmt: skip
                    assert c.get(f"https://localhost:{upstream.port}/echo/meanwhile").status_code == 200
                assert time.monotonic() - started < 2  # the dead webhook does not slow the proxy
                with server.http() as c:
                    body = {"password": OWNER_PASSWORD, "scope": "once"}
                    c.post(f"/v1/vaults/default/holds/{hold['id']}/approve", json=body).raise_for_status()
                assert fut.result(timeout=30) == 200
            decided = _events(hook, 3)[2]
            assert decided["event"] == "hold.decided" and decided["data"]["status"] == "approved"
            assert decided["data"]["decided_by"] == "user:owner@example.com"

            texts = [json.loads(r["body"]) for r in slack.requests_seen.wait_for(3, timeout=15)]
            assert all(set(t) == {"text"} for t in texts)
            assert "proposes NEW_KEY in vault default" in texts[0]["text"]
            assert "agent:pay-bot waits for approval: POST localhost/echo/pay" in texts[1]["text"]
            wait_until(
                lambda: f"webhook to 127.0.0.1:{dead}/down failed after 4 attempts" in server.stderr_text(),
                "the dead webhook to be reported",
                timeout=30,
            )
            everything = json.dumps([r["body"].decode() for r in hook.requests_seen.snapshot()])
            for leak in (SECRET, token, "av_appr_", "av_sess_", OWNER_PASSWORD):
                assert leak not in everything
            assert "not-a-real-secret" not in server.stderr_text()  # webhook URLs are never logged


def test_the_egress_guard_applies_to_webhooks(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    with TLSUpstream(ca=upstream_ca) as hook:
        env = {"AGENT_VAULT_NOTIFY_URL": f"https://localhost:{hook.port}/echo/hook"}
        with ServerProc(tmp_path, upstream_ca, env=env, allow_net=False) as server:
            token = server.make_agent("some-bot")
            with server.http(token) as agent:
                r = agent.post("/v1/proposals", json={"credentials": [{"action": "set", "key": "K1"}]})
                assert r.status_code == 201
            wait_until(
                lambda: (
                    f"webhook to localhost:{hook.port}/echo/hook failed after 4 attempts (SsrfBlocked)"
                    in server.stderr_text()
                ),
                "the blocked webhook to be reported",
                timeout=30,
            )
        assert hook.requests_seen.snapshot() == []
