"""Per-service request quotas (issue #20), end to end: N requests per agent token and window pass,
the next gets 429 `quota_exceeded` with Retry-After and never reaches the upstream; another token
has its own count; `discover` shows the quota and what the asking token used."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trustme
from helpers.proxy import wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("quota"), upstream_ca) as s:
        s.set_credential("API_TOKEN", "sk-quota-secret-value-1")
        s.add_service(
            {
                "name": "metered",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
                "quota": "3 / Hour",
            }
        )
        yield s


def _client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15)


def test_quota_per_token_then_429_with_retry_after(srv: ServerProc, up: TLSUpstream) -> None:
    first, second = srv.make_agent("quota-one"), srv.make_agent("quota-two")
    url = f"https://localhost:{up.port}/echo/q"
    up.requests_seen.clear()
    with _client(srv, first) as c:
        assert [c.get(url).status_code for _ in range(3)] == [200, 200, 200]
        r = c.get(url)
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"] == "quota_exceeded" and body["quota"] == "3/hour" and body["service"] == "metered"
    assert 1 <= int(r.headers["retry-after"]) <= 3600
    assert len(up.requests_seen.snapshot()) == 3
    rec = wait_audit(srv.home, error="quota_exceeded")
    assert rec["decision"] == "denied" and rec["status"] == 429
    with _client(srv, second) as c:  # another agent token has its own window
        assert c.get(url).status_code == 200
    d = httpx.get(srv.api + "/v1/discover", headers={"Authorization": f"Bearer {first}"}, trust_env=False)
    svc = next(s for s in d.json()["services"] if s["name"] == "metered")
    assert svc["quota"] == "3/hour" and svc["quota_used"] == 3
    text = httpx.get(srv.api + "/metrics", trust_env=False).text
    assert 'agent_vault_rate_limited_total{limiter="quota"}' in text


def test_invalid_quota_is_refused(srv: ServerProc, up: TLSUpstream) -> None:
    with pytest.raises(httpx.HTTPStatusError) as e:
        srv.add_service(
            {"name": "bad-quota", "host": "example.com", "auth": {"type": "passthrough"}, "quota": "5/week"}
        )
    assert e.value.response.status_code in (400, 422)
    assert "N/min, N/hour or N/day" in e.value.response.text
