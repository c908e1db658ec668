"""The product's first promise: an agent's request gets the secret injected; the agent never sees it."""

from __future__ import annotations

import httpx
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

SECRET = "sk-live-very-secret-value-123"


def test_bearer_injected_and_never_returned(server: ServerProc, upstream: TLSUpstream) -> None:
    server.set_credential("API_TOKEN", SECRET)
    server.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = server.make_agent("smoke-bot")
    with httpx.Client(proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False) as c:
        r = c.get(
            f"https://localhost:{upstream.port}/echo/hello", headers={"Authorization": "Bearer agent-fake"}
        )
        assert r.status_code == 200
        got = dict((k.lower(), v) for k, v in upstream.requests_seen.wait_for(1)[-1]["headers"])
        assert got["authorization"] == f"Bearer {SECRET}"  # the upstream got the real value...
        assert "proxy-authorization" not in got
        assert SECRET not in r.text  # ...the agent only sees it redacted in the echo
        assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:API_TOKEN]"
        reflected = c.get(f"https://localhost:{upstream.port}/reflect?header=authorization")
        assert SECRET not in reflected.text
        assert SECRET not in reflected.headers.get("x-reflected", "")
        assert "[REDACTED:API_TOKEN]" in reflected.text
    assert server.stop() == 0
    assert SECRET not in server.stderr_text()
    assert SECRET.encode() not in (server.home / "agent-vault.db").read_bytes()
