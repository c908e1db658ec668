"""The differential suite's own check (issue #24): `FASTPATH_SUITE=on|off` reaches the servers tests start.

`scripts/fastpath-diff` runs the proxy e2e files and tests/security once with the fast path on and once
off and requires identical outcomes; that comparison means nothing if the setting never reached the server.
One real server, three injected HTTP/1.1 requests on one kept-alive connection (httpx offers ALPN http/1.1
only), then `/metrics` (`agent_vault_proxy_path_requests_total{path=...}`) and the audit records
(`served_by`) must say which path served them: some by the fast path with `on` and when unset (the
default is on), none with `off`.
"""

from __future__ import annotations

import re

import httpx
from helpers.env import fast_path_suite
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

SECRET = "sk-fastpath-suite-secret-3d9a"


def served_by_path(server: ServerProc) -> dict[str, int]:
    text = httpx.get(server.api + "/metrics", trust_env=False, timeout=30).text
    out: dict[str, int] = {}
    for m in re.finditer(r'^agent_vault_proxy_path_requests_total\{path="(\w+)"\} ([0-9.e+]+)$', text, re.M):
        out[m[1]] = out.get(m[1], 0) + int(float(m[2]))
    return out


def test_the_session_setting_reaches_the_server(server: ServerProc, upstream: TLSUpstream) -> None:
    server.set_credential("FP_KEY", SECRET)
    auth = {"type": "bearer", "token": "FP_KEY"}
    server.add_service({"name": "echo", "host": "localhost", "port": upstream.port, "auth": auth})
    token = server.make_agent("fastpath-suite")
    url = f"https://localhost:{upstream.port}/echo/fastpath-suite"
    proxy = server.proxy_url(token)
    with httpx.Client(proxy=proxy, verify=str(server.ca_bundle), trust_env=False, timeout=30) as c:
        for _ in range(3):
            r = c.get(url)
            assert r.status_code == 200, r.text
            assert SECRET not in r.text and "[REDACTED:FP_KEY]" in r.text
    with server.http() as c:
        assert c.post("/v1/audit/verify").status_code == 200  # flushes the audit queue
        recs = c.get("/v1/audit", params={"kind": "proxy.request", "limit": 100}).json()["records"]
    served = [rec.get("served_by", "engine") for rec in recs if rec.get("path") == "/echo/fastpath-suite"]
    by_path = served_by_path(server)
    assert len(served) == 3 and sum(by_path.values()) == 3, (served, by_path)
    setting = fast_path_suite()
    if setting == "on":
        assert by_path.get("fast", 0) >= 1 and "fast" in served, (served, by_path)
    elif setting == "off":
        assert by_path.get("fast", 0) == 0 and set(served) == {"engine"}, (served, by_path)
    else:  # the default is on (issue 24)
        assert by_path.get("fast", 0) >= 1 and "fast" in served, (served, by_path)
