"""Brokered credentials under attack (issue #16): OAuth2 access tokens, client secrets, rotated refresh
tokens and AWS keys never reach the agent, a log line, an audit row or a file in clear, whatever the
upstream echoes; a hostile or unreachable token endpoint (oversized answer, redirect, a metadata
address) yields 502 `credential_unavailable` and the request is never sent; the agent cannot make
the proxy substitute a client secret into its own request. Every value is registered with the sweep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trustme
from helpers.oauth import TokenServer
from helpers.upstream import UpstreamResponse
from security.conftest import Forger, Sweep, SweptServer, new_secret, start_server


@pytest.fixture(scope="module")
def idp(upstream_ca: trustme.CA, sweep: Sweep) -> Iterator[TokenServer]:
    cid, secret, rt = sweep.value("OAUTH_ID"), sweep.value("OAUTH_SECRET"), sweep.value("OAUTH_RT")
    with TokenServer(ca=upstream_ca, client_id=cid, client_secret=secret, refresh_token=rt, rotate=True) as t:
        yield t
        for i, token in enumerate([*t.issued, t.refresh_token]):  # every token it ever handed out
            sweep.value(f"oauth token {i}", token)


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    sweep: Sweep,
    up: Forger,
    idp: TokenServer,
) -> Iterator[SweptServer]:
    for s in start_server(
        tmp_path_factory, upstream_ca, sweep, "brokered", extra_args=("--log-level", "debug")
    ):
        s.set_credential("OAUTH_ID", idp.client_id)
        s.set_credential("OAUTH_SECRET", idp.client_secret)
        s.set_credential("OAUTH_RT", idp.refresh_token)
        s.set_credential(
            "AWS_ID", sweep.value("AWS_ID", "AKIA" + new_secret()[:16].upper().replace("-", "A"))
        )
        s.set_credential("AWS_SECRET", sweep.value("AWS_SECRET"))
        common = {
            "token_url": f"https://localhost:{idp.port}/token",
            "client_id": "OAUTH_ID",
            "client_secret": "OAUTH_SECRET",
        }
        for name, path, auth in (
            ("cc-api", "/reflect", {"type": "oauth2-client-credentials", **common}),
            ("rt-api", "/sse", {"type": "oauth2-refresh-token", **common, "refresh_token": "OAUTH_RT"}),
            ("echo-api", "/echo", {"type": "oauth2-client-credentials", **common, "scopes": ["echo"]}),
            ("hostile", "/status", {"type": "oauth2-client-credentials", **common, "scopes": ["hostile"]}),
            (
                "metadata",
                "/download",
                {**common, "type": "oauth2-client-credentials", "token_url": "https://169.254.169.254/token"},
            ),
        ):
            s.add_service({"name": name, "host": "localhost", "port": up.port, "path": path, "auth": auth})
        s.add_service(
            {
                "name": "aws-api",
                "host": "127.0.0.1",
                "port": up.port,
                "auth": {
                    "type": "aws-sigv4",
                    "access_key_id": "AWS_ID",
                    "secret_access_key": "AWS_SECRET",
                    "region": "us-east-1",
                    "service": "sqs",
                },
            }
        )
        yield s


def test_echoed_tokens_and_keys_are_redacted(srv: SweptServer, up: Forger, idp: TokenServer) -> None:
    token = srv.make_agent("brokered-bot")
    with srv.agent_client(token) as c:
        r = c.get(f"https://localhost:{up.port}/reflect?header=authorization")
        assert r.status_code == 200 and r.text == "Bearer [REDACTED:cc-api:access_token]"
        r = c.get(f"https://localhost:{up.port}/sse?n=2&delay=0&reflect=authorization")
        assert "[REDACTED:rt-api:access_token]" in r.text
        r = c.post(f"https://127.0.0.1:{up.port}/echo/aws", content=b"Action=List")
        assert r.status_code == 200 and "[REDACTED:aws-api:aws]" in r.json()["headers"]["authorization"]
        leak = c.get(
            f"https://localhost:{up.port}/echo/x?s={{{{OAUTH_SECRET}}}}",
            headers={"X-Leak": "{{OAUTH_SECRET}}"},
        )
        seen = leak.json()
        assert seen["headers"]["x-leak"] == "{{OAUTH_SECRET}}" and "OAUTH_SECRET" in seen["query"]
    assert len(idp.issued) == 3 and idp.refresh_tokens_seen  # a rotated refresh token was stored back


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (
            UpstreamResponse(
                200, [("content-type", "application/json")], b'{"access_token": "' + b"a" * 70000 + b'"}'
            ),
            "answer_too_large",
        ),
        (UpstreamResponse(302, [("location", "https://evil.example/token")], b""), "http_302"),
        (
            UpstreamResponse(
                200, [("content-type", "application/json")], b'{"access_token": "x\\r\\nInjected: 1"}'
            ),
            "invalid_access_token",
        ),
    ],
)
def test_hostile_token_endpoint_answers(
    srv: SweptServer, up: Forger, idp: TokenServer, answer: UpstreamResponse, cause: str
) -> None:
    token = srv.make_agent(f"hostile-{cause.replace('_', '-')}")
    before = len([x for x in up.requests_seen.snapshot() if x["path"].startswith("/status")])
    idp.override = answer
    try:
        with srv.agent_client(token) as c:
            r = c.get(f"https://localhost:{up.port}/status/200")
    finally:
        idp.override = None
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert cause in r.json()["hint"] and "hostile" in r.json()["hint"]
    assert len([x for x in up.requests_seen.snapshot() if x["path"].startswith("/status")]) == before


def test_token_endpoint_at_a_metadata_address_is_blocked(srv: SweptServer, up: Forger) -> None:
    token = srv.make_agent("metadata-bot")
    with srv.agent_client(token) as c:
        r = c.get(f"https://localhost:{up.port}/download?bytes=10")
    body = r.json()
    assert r.status_code == 502 and body["error"] == "credential_unavailable"
    assert "ssrf_blocked" in body["hint"] and "169.254.169.254" in json.dumps(body)
