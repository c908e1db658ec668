"""`agent-vault server --reuse-port`: two real server processes bound to ONE proxy port both serve.

The two replicas are copies of one instance (same DEK, CA, agent token) in two homes: SQLite cannot be
shared by two writers, and this test is about the listener, not the database. Each replica writes the
audit records of the requests it served into its own home, which tells which replica served what.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import trustme
from helpers.proxy import audit_records, free_port
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

REQUESTS = 40


def _served(home: Path) -> int:
    return len(audit_records(home, kind="proxy.request", decision="injected"))


def test_two_replicas_share_one_proxy_port_and_both_serve(
    tmp_path: Path, upstream_ca: trustme.CA, upstream: TLSUpstream
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerProc(tmp_path / "a", upstream_ca)
    a.init()
    a.start()
    a.set_credential("API_TOKEN", "reuse-port-secret-0001")
    a.add_service(
        {
            "name": "echo-api",
            "host": "localhost",
            "port": upstream.port,
            "path": "/echo",
            "auth": {"type": "bearer", "token": "API_TOKEN"},
        }
    )
    token = a.make_agent("replica-bot")
    assert a.stop() == 0
    b = ServerProc(tmp_path / "b", upstream_ca)
    shutil.copytree(a.home, b.home)  # the same instance in a second home
    port = free_port()
    try:
        a.start("--reuse-port", "--proxy-port", str(port))
        b.start("--reuse-port", "--proxy-port", str(port))
        assert a.proxy_port == b.proxy_port == port
        for _ in range(REQUESTS):  # a new connection per request: the kernel picks a replica each time
            with httpx.Client(proxy=a.proxy_url(token), verify=str(a.ca_bundle), trust_env=False) as c:
                r = c.get(f"https://localhost:{upstream.port}/echo/x")
                assert r.status_code == 200, r.text
        wait_until(lambda: _served(a.home) + _served(b.home) == REQUESTS, "every request audited", timeout=10)
        assert _served(a.home) > 0 and _served(b.home) > 0  # both replicas took a share
        seen = upstream.requests_seen.snapshot()
        assert len(seen) == REQUESTS
        assert all(
            dict((k.lower(), v) for k, v in q["headers"])["authorization"] == "Bearer reuse-port-secret-0001"
            for q in seen
        )
    finally:
        b.stop()
        a.stop()


def test_without_reuse_port_a_second_server_on_the_port_fails(
    tmp_path: Path, upstream_ca: trustme.CA
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerProc(tmp_path / "a", upstream_ca)
    b = ServerProc(tmp_path / "b", upstream_ca)
    a.init()
    b.init()
    port = free_port()
    try:
        a.start("--reuse-port", "--proxy-port", str(port))
        try:
            b.start("--proxy-port", str(port))  # b did not opt in: the kernel refuses the bind
        except RuntimeError as e:
            assert "cannot bind the proxy listener" in str(e)
        else:
            raise AssertionError("a server without --reuse-port bound a port in use")
    finally:
        b.stop()
        a.stop()
