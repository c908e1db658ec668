"""Streaming through the proxy: SSE is not buffered, large downloads stream, HTTP/2 to the client,
WebSockets get injected (SPEC §5.8, §5.9), with redaction active on every one of them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream, download_payload
from helpers.wsclient import ws_via_proxy

SECRET = "stream-secret-value-9999"
SUBST = "ws-substituted-value-8888"
TOKENS: list[str] = []


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("streaming"), upstream_ca) as s:
        s.set_credential("STREAM_TOKEN", SECRET)
        s.set_credential("WS_VALUE", SUBST)
        s.add_service(
            {
                "name": "stream-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "STREAM_TOKEN"},
                "substitutions": {"keys": ["WS_VALUE"], "in": ["header", "websocket"]},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    t = srv.make_agent("stream-bot")
    TOKENS.append(t)
    return t


@pytest.fixture
def client(srv: ServerProc, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=30
    ) as c:
        yield c


def test_sse_events_are_not_buffered(client: httpx.Client, up: TLSUpstream) -> None:
    t0 = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with client.stream("GET", f"https://localhost:{up.port}/sse?n=3&delay=0.5&reflect=authorization") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.monotonic() - t0, line))
    assert len(arrivals) == 3
    assert arrivals[0][0] < 0.4, arrivals  # the upstream sends event 0 at once, the last after 1 s
    assert arrivals[-1][0] >= 0.9
    for _, line in arrivals:  # each event echoes the injected header: redacted in the stream
        assert json.loads(line[5:])["reflected"] == "Bearer [REDACTED:STREAM_TOKEN]"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_ten_mib_download_streams_intact(client: httpx.Client, up: TLSUpstream, chunked: bool) -> None:
    n = 10 * 1024 * 1024
    digest, size = hashlib.sha256(), 0
    t0 = time.monotonic()
    first: float | None = None
    url = f"https://localhost:{up.port}/download?bytes={n}" + ("&chunked=1" if chunked else "")
    with client.stream("GET", url) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            first = first if first is not None else time.monotonic() - t0
            digest.update(piece)
            size += len(piece)
    assert size == n and digest.hexdigest() == hashlib.sha256(download_payload(n)).hexdigest()
    assert first is not None and first < 2.0


def test_http2_to_the_client_is_injected(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    cp = subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "--http2",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(srv.ca_bundle),
            "-w",
            "\n%{http_version}",
            f"https://localhost:{up.port}/echo/h2",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    body, _, version = cp.stdout.rpartition("\n")
    assert version == "2", cp.stdout + cp.stderr
    seen = up.requests_seen.wait_for(1)[0]
    assert seen["http_version"] == "HTTP/2"
    assert dict((k.lower(), v) for k, v in seen["headers"])["authorization"] == f"Bearer {SECRET}"
    assert json.loads(body)["headers"]["authorization"] == "Bearer [REDACTED:STREAM_TOKEN]"


def test_httpx_http2_gets_http2_from_the_mitm(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    """httpx behind a proxy offers ALPN http/1.1 before h2; the proxy still chooses h2."""
    up.requests_seen.clear()
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, http2=True
    ) as c:
        r = c.get(f"https://localhost:{up.port}/echo/httpx-h2")
        assert c.get(f"https://localhost:{up.port}/echo/again").status_code == 200
    assert r.http_version == "HTTP/2" and r.status_code == 200
    assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:STREAM_TOKEN]"
    seen = up.requests_seen.wait_for(1)[0]
    assert dict((k.lower(), v) for k, v in seen["headers"])["authorization"] == f"Bearer {SECRET}"


def test_http2_sse_is_streamed(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    proc = subprocess.Popen(
        [
            "/usr/bin/curl",
            "-sSN",
            "--http2",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(srv.ca_bundle),
            f"https://localhost:{up.port}/sse?n=3&delay=0.5",
        ],
        stdout=subprocess.PIPE,
        env={"PATH": "/usr/bin"},
    )
    assert proc.stdout is not None
    t0 = time.monotonic()
    while not (line := proc.stdout.readline()).startswith(b"data:"):
        assert line, "stream ended before the first event"
    first = time.monotonic() - t0
    rest = proc.stdout.read()
    proc.wait(10)
    assert first < 0.4 and rest.count(b"data:") == 2


def test_websocket_upgrade_is_injected_and_redacted(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    up.requests_seen.clear()
    with ws_via_proxy(
        srv.proxy_port,
        token,
        f"wss://localhost:{up.port}/ws",
        str(srv.ca_bundle),
        additional_headers={"Authorization": "Bearer agent-fake"},
    ) as ws:
        hello = json.loads(ws.recv(timeout=10))
        ws.send("sub={{WS_VALUE}} other={{STREAM_TOKEN}}")
        echoed = ws.recv(timeout=10)
        ws.send(b"\x00binary")
        assert ws.recv(timeout=10) == b"\x00binary"
    seen = up.requests_seen.wait_for(1)[0]
    upgrade = dict((k.lower(), v) for k, v in seen["headers"])
    assert upgrade["authorization"] == f"Bearer {SECRET}"  # the upstream got the real credential...
    assert "sec-websocket-extensions" not in upgrade  # substitution opted in: frames stay uncompressed
    assert hello["headers"]["authorization"] == "Bearer [REDACTED:STREAM_TOKEN]"  # ...the agent never sees it
    # WS_VALUE was substituted on the way out (and redacted on the way back); STREAM_TOKEN is not a
    # substitution key of this service, so its placeholder went out literally.
    assert echoed == "sub=[REDACTED:WS_VALUE] other={{STREAM_TOKEN}}"


def test_no_secret_or_token_in_server_log(srv: ServerProc) -> None:
    log = srv.stderr_text()
    for value in (SECRET, SUBST, *TOKENS, srv.owner_token, OWNER_PASSWORD):
        assert value not in log
