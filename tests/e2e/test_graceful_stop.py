"""SPEC §2.1: SIGINT/SIGTERM stop accepting, finish in-flight requests (up to 10 s), flush the audit queue.
Real server, real upstream (`/delay`), on the engine and the fast path."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.proxy import audit_records
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream


@pytest.fixture(params=["on", "off"], ids=["fast-path", "engine"])
def srv(
    request: pytest.FixtureRequest, tmp_path: Path, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path, upstream_ca, extra_args=("--fast-path", request.param))
    s.init()
    s.start()
    try:
        s.set_credential("K", "graceful-secret-1")
        s.add_service(
            {"name": "slow", "host": "localhost", "port": up.port, "auth": {"type": "bearer", "token": "K"}}
        )
        yield s
    finally:
        s.stop()


def test_a_request_in_flight_finishes_and_is_audited(srv: ServerProc, up: TLSUpstream) -> None:
    token = srv.make_agent("slow-bot")
    idle = httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), timeout=30)
    assert idle.get(f"https://localhost:{up.port}/echo/warm").status_code == 200  # then kept idle
    got: dict[str, object] = {}

    def slow() -> None:
        with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), timeout=30) as c:
            try:
                r = c.get(f"https://localhost:{up.port}/delay?seconds=2.5")
                got["status"], got["body"] = r.status_code, r.json()
            except httpx.HTTPError as e:
                got["error"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.0)  # scenario: the request is at the upstream when the stop comes
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no new connection is accepted meanwhile
        socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=2).close()
    t.join(timeout=20)
    code = srv.proc.wait(timeout=20)
    took = time.monotonic() - t0
    idle.close()
    assert got.get("status") == 200 and got.get("body") == {"delayed": 2.5}, got
    assert code == 0
    assert took < 8, took  # the idle keep-alive connection did not hold the stop for the full 10 s
    recs = [r for r in audit_records(srv.home, port=up.port) if str(r.get("path")).startswith("/delay")]
    assert len(recs) == 1 and recs[0]["status"] == 200 and recs[0]["decision"] == "injected", recs


def test_a_request_still_in_flight_at_the_deadline_is_cut_and_audited(
    srv: ServerProc, up: TLSUpstream
) -> None:
    """Past the 10 s drain the server stops anyway (exit 0): the slow request is cut, the agent sees
    the connection end (no answer made up), and the request still has its audit record, naming the
    key that was injected (it reached the upstream) although the exchange failed."""
    token = srv.make_agent("too-slow-bot")
    got: dict[str, object] = {}

    def slow() -> None:
        with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), timeout=60) as c:
            try:
                r = c.get(f"https://localhost:{up.port}/delay?seconds=40")
                got["status"] = r.status_code
            except httpx.HTTPError as e:
                got["error"] = type(e).__name__

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(1.0)
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(timeout=30)
    took = time.monotonic() - t0
    t.join(timeout=30)
    assert code == 0
    assert 9.5 <= took < 20, took  # the drain waited its 10 s, then the stop went on
    assert "status" not in got and got.get("error"), got
    recs = [r for r in audit_records(srv.home, port=up.port) if str(r.get("path")).startswith("/delay")]
    assert len(recs) == 1 and recs[0]["decision"] == "error" and recs[0]["error"], recs
    assert recs[0]["injected_keys"] == ["K"], recs  # the credential went out: the record says which
