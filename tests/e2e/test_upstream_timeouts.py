"""SPEC §6 `upstream_timeout` (504): an upstream that does not connect, or does not answer, in time.

Real servers (engine and fast path, `--fast-path off|on`) with short deadlines
(`--connect-timeout 1.5 --first-byte-timeout 1.5`). The upstream that never connects is a loopback
listener whose accept queue is full (the kernel drops further SYNs, as a black-holed host does); the
one that never answers is the test upstream's `/delay`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.proxy import RawConn, basic, wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

SECRET = "timeout-secret-value-7373"
DEADLINE = 1.5


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A loopback port where connecting hangs: backlog 0, its one queue slot taken and never accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    for _ in range(2):  # fill the accept queue (one slot for backlog 0, a second in flight)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        held.append(s)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):  # the premise: a new connect does hang here
            probe.connect(("127.0.0.1", port))
    finally:
        probe.close()
    yield port
    for s in held:
        s.close()
    listener.close()


@pytest.fixture(scope="module")
def tls_silent() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word (a TLS handshake hangs)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()  # the accepted-but-never-read connections go with it


@pytest.fixture(scope="module", params=["on", "off"], ids=["fast-path", "engine"])
def srv(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    up: TLSUpstream,
    blackhole: int,
    tls_silent: int,
) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp(f"timeouts-{request.param}")
    args = ("--connect-timeout", str(DEADLINE), "--first-byte-timeout", str(DEADLINE))
    with ServerProc(tmp, upstream_ca, extra_args=(*args, "--fast-path", request.param)) as s:
        s.set_credential("TIMEOUT_TOKEN", SECRET)
        auth = {"type": "bearer", "token": "TIMEOUT_TOKEN"}
        s.add_service({"name": "slow-api", "host": "localhost", "port": up.port, "auth": auth})
        s.add_service({"name": "dead-api", "host": "127.0.0.1", "port": blackhole, "auth": auth})
        s.add_service({"name": "mute-api", "host": "127.0.0.1", "port": tls_silent, "auth": auth})
        yield s


@pytest.fixture(scope="module")
def client(srv: ServerProc) -> Iterator[httpx.Client]:
    token = srv.make_agent("timeout-bot")
    with httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), timeout=30) as c:
        yield c


def _timed(c: httpx.Client, url: str, **kw: object) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    r = c.get(url, **kw)  # type: ignore[arg-type]
    return r, time.monotonic() - t0


def test_an_upstream_that_never_connects_is_a_504_after_the_connect_deadline(
    srv: ServerProc, client: httpx.Client, blackhole: int
) -> None:
    r, took = _timed(client, f"https://127.0.0.1:{blackhole}/v1/anything")
    assert r.status_code == 504, r.text
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    body = r.json()
    assert body["error"] == "upstream_timeout" and body["cause"] == "timed out", body
    assert DEADLINE - 0.2 <= took < DEADLINE + 5, took  # the deadline, not the kernel's ~2 minutes
    assert SECRET not in r.text
    rec = wait_audit(srv.home, host="127.0.0.1", port=blackhole, status=504)
    assert rec["error"] == "upstream_timeout" and rec["service"] == "dead-api"


def test_an_upstream_whose_tls_handshake_hangs_is_a_504_after_the_connect_deadline(
    srv: ServerProc, client: httpx.Client, tls_silent: int
) -> None:
    r, took = _timed(client, f"https://127.0.0.1:{tls_silent}/v1/anything")
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["error"] == "upstream_timeout" and body["cause"] == "timed out", body
    assert DEADLINE - 0.2 <= took < DEADLINE + 5, took
    rec = wait_audit(srv.home, port=tls_silent, status=504)
    assert rec["error"] == "upstream_timeout" and rec["service"] == "mute-api"


def test_an_upstream_that_never_answers_is_a_504_after_the_first_byte_deadline(
    srv: ServerProc, client: httpx.Client, up: TLSUpstream
) -> None:
    r, took = _timed(client, f"https://localhost:{up.port}/delay?seconds=20")
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["error"] == "upstream_timeout" and body["cause"] == "timed out", body
    assert DEADLINE - 0.2 <= took < DEADLINE + 5, took
    rec = wait_audit(srv.home, port=up.port, status=504)
    assert rec["error"] == "upstream_timeout" and rec["service"] == "slow-api"
    # the agent's connection goes on: the next request is served (on a fresh upstream connection)
    ok = client.get(f"https://localhost:{up.port}/echo/after")
    assert ok.status_code == 200
    assert ok.json()["headers"]["authorization"] == "Bearer [REDACTED:TIMEOUT_TOKEN]"  # injected, redacted


def test_a_tunnel_to_an_upstream_that_never_connects_is_closed_after_the_connect_deadline(
    srv: ServerProc, blackhole: int
) -> None:
    """A tunnel (no service on localhost:<blackhole>: the vault's tunnel policy) is answered 200 before
    the upstream is dialled, so a dial that never completes can only end it: at the deadline, not after
    the kernel's ~2 minutes (or the 900 s idle timeout)."""
    token = srv.make_agent("tunnel-bot")
    with RawConn(srv.proxy_port, timeout=30) as c:
        r = c.connect(f"localhost:{blackhole}", {"Proxy-Authorization": basic(token)})
        assert r.status == 200
        t0 = time.monotonic()
        c.send(b"\x16\x03\x01 not really a ClientHello")
        try:
            got = c.f.read(1)
        except ConnectionError:
            got = b""
        took = time.monotonic() - t0
    assert got == b""
    assert DEADLINE - 0.2 <= took < DEADLINE + 5, took


def test_an_answer_within_the_deadline_and_a_slow_upload_are_not_cut(
    client: httpx.Client, up: TLSUpstream
) -> None:
    r = client.get(f"https://localhost:{up.port}/delay?seconds=0.5")
    assert r.status_code == 200 and r.json() == {"delayed": 0.5}

    def slow_body() -> Iterator[bytes]:  # the upload takes longer than the first-byte deadline
        for i in range(5):
            time.sleep(DEADLINE / 2)
            yield f"part-{i};".encode()

    t0 = time.monotonic()
    r = client.post(f"https://localhost:{up.port}/echo/upload", content=slow_body())
    assert r.status_code == 200, r.text
    assert r.json()["body"] == "".join(f"part-{i};" for i in range(5))
    assert time.monotonic() - t0 > DEADLINE  # really slower than the deadline


def test_deadline_flags_are_validated(tmp_path: Path, upstream_ca: trustme.CA) -> None:
    s = ServerProc(tmp_path, upstream_ca)
    s.init()
    with pytest.raises(RuntimeError, match="first_byte_timeout"):
        s.start("--first-byte-timeout", "0")
