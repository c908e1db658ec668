"""SPEC §9: `GET /v1/agents` tells when each agent was last used (proxy or API), written by the server
in the background (at most a minute late) and at shutdown."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trustme
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream


def _last_used(home: Path) -> dict[str, str | None]:
    db = sqlite3.connect(f"file:{home / 'agent-vault.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT name, last_used_at FROM agents").fetchall())
    finally:
        db.close()


def test_agents_last_use_is_recorded(tmp_path: Path, upstream_ca: trustme.CA, upstream: TLSUpstream) -> None:
    srv = ServerProc(tmp_path, upstream_ca)
    srv.init()
    srv.start()
    try:
        srv.set_credential("K", "last-used-secret-1")
        srv.add_service(
            {
                "name": "api",
                "host": "localhost",
                "port": upstream.port,
                "auth": {"type": "bearer", "token": "K"},
            }
        )
        proxy_user, api_user = srv.make_agent("proxy-bot"), srv.make_agent("api-bot")
        srv.make_agent("idle-bot")
        with httpx.Client(proxy=srv.proxy_url(proxy_user), verify=str(srv.ca_bundle)) as c:
            assert c.get(f"https://localhost:{upstream.port}/echo/seen").status_code == 200
        with srv.http(api_user) as c:
            assert c.get("/v1/discover").status_code == 200
        started = datetime.now(UTC) - timedelta(seconds=5)
    finally:
        code = srv.stop()
    assert code == 0  # stopped cleanly: the notes were written at shutdown
    seen = _last_used(srv.home)
    assert seen["idle-bot"] is None
    for name in ("proxy-bot", "api-bot"):
        when = datetime.fromisoformat(str(seen[name])).replace(tzinfo=UTC)
        assert started <= when <= datetime.now(UTC), (name, when)
    srv.start()  # the API reports it
    try:
        with srv.http() as c:
            agents = {a["name"]: a["last_used_at"] for a in c.get("/v1/agents").json()["agents"]}
    finally:
        srv.stop()
    assert agents["idle-bot"] is None and agents["proxy-bot"] and agents["api-bot"], agents
