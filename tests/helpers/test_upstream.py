"""Tests for the loopback test upstreams themselves (no proxy involved)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import trustme
from websockets.sync.client import connect as ws_connect

from helpers.upstream import (
    DEFAULT_HOSTNAMES,
    GitHttpUpstream,
    PlainUpstream,
    TLSUpstream,
    download_payload,
    git_env,
    make_bare_repo,
)


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSUpstream]:
    with TLSUpstream() as up:
        yield up
    assert up.errors == []


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainUpstream]:
    with PlainUpstream() as up:
        yield up
    assert up.errors == []


@pytest.fixture(autouse=True)
def _no_asyncio_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The server threads must not log asyncio warnings/errors (leaked tasks, reaped children, ...)."""
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        yield
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def _session(up: TLSUpstream) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never pick up a proxy from the environment
    s.verify = up.ca_pem_path
    return s


# ---- basics ---------------------------------------------------------------------------------------


def test_binds_loopback_and_writes_ca(tls: TLSUpstream) -> None:
    assert tls.host == "127.0.0.1"
    assert tls.port > 0
    assert tls.ws_port == tls.port
    assert Path(tls.ca_pem_path).read_bytes() == tls.ca.cert_pem.bytes()
    assert isinstance(tls.ca, trustme.CA)


def test_echo_http1(tls: TLSUpstream) -> None:
    tls.requests_seen.clear()
    with _session(tls) as s:
        r = s.post(tls.url("/echo/a/b?x=1&y=2"), data=b"hello", headers={"X-Test": "one"})
    assert r.status_code == 200
    body = r.json()
    assert body["method"] == "POST"
    assert body["path"] == "/echo/a/b"
    assert body["query"] == "x=1&y=2"
    assert body["headers"]["x-test"] == "one"
    assert ["X-Test", "one"] in body["header_list"]
    assert body["body"] == "hello"
    assert body["http_version"] == "HTTP/1.1"
    seen = tls.requests_seen.wait_for(1)
    assert seen[-1]["method"] == "POST"
    assert seen[-1]["path"] == "/echo/a/b?x=1&y=2"
    assert seen[-1]["body"] == b"hello"
    assert ("X-Test", "one") in seen[-1]["headers"]
    assert seen[-1]["http_version"] == "HTTP/1.1"


def test_echo_repeated_headers_joined(tls: TLSUpstream) -> None:
    with httpx.Client(verify=tls.client_ssl_context(), trust_env=False) as c:
        r = c.get(tls.url("/echo"), headers=[("X-Multi", "a"), ("X-Multi", "b")])
    assert r.json()["headers"]["x-multi"] == "a, b"


@pytest.mark.parametrize("host", ["localhost", "upstream.test", "api.upstream.test", "x.upstream.test"])
def test_certificate_names(tls: TLSUpstream, host: str) -> None:
    ctx = tls.client_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", tls.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls_sock,
    ):
        assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
    assert host in tls.sni_seen


def test_certificate_rejects_other_names(tls: TLSUpstream) -> None:
    ctx = tls.client_ssl_context()
    with (
        socket.create_connection(("127.0.0.1", tls.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="example.com")


def test_http2(tls: TLSUpstream) -> None:
    with httpx.Client(http2=True, verify=tls.client_ssl_context(), trust_env=False) as c:
        r = c.put(tls.url("/echo?h2=1"), content=b"x" * 200_000, headers={"X-H2": "yes"})
        assert r.http_version == "HTTP/2"
        body = r.json()
        assert body["http_version"] == "HTTP/2"
        assert body["body_length"] == 200_000
        assert body["headers"]["x-h2"] == "yes"
        assert body["authority"] == f"127.0.0.1:{tls.port}"
        big = c.get(tls.url("/download?bytes=3000000"))
        assert big.content == download_payload(3_000_000)
        sse = c.get(tls.url("/sse?n=2&delay=0.05"))
        assert sse.text.count("event: message") == 2


def test_http2_can_be_disabled() -> None:
    with (
        TLSUpstream(http2=False) as up,
        httpx.Client(http2=True, verify=up.client_ssl_context(), trust_env=False) as c,
    ):
        assert c.get(up.url("/echo")).http_version == "HTTP/1.1"


def test_shared_ca() -> None:
    ca = trustme.CA()
    with TLSUpstream(ca=ca) as a, TLSUpstream(ca=ca, hostnames=["only.test"]) as b:
        assert a.ca is b.ca
        with _session(a) as s:
            assert s.get(a.url("/status/200")).status_code == 200
        assert b.hostnames == ("only.test",)
        assert "upstream.test" in DEFAULT_HOSTNAMES


# ---- endpoints ------------------------------------------------------------------------------------


def test_reflect(tls: TLSUpstream) -> None:
    with _session(tls) as s:
        r = s.get(tls.url("/reflect?header=Authorization"), headers={"Authorization": "Bearer sekrit-123"})
        assert r.text == "Bearer sekrit-123"
        assert r.headers["X-Reflected"] == "Bearer sekrit-123"
        missing = s.get(tls.url("/reflect?header=X-Nope"))
        assert missing.status_code == 200
        assert missing.text == ""
        assert s.get(tls.url("/reflect")).status_code == 400


def test_reflect_gzip_and_chunked(tls: TLSUpstream) -> None:
    with _session(tls) as s:
        r = s.get(
            tls.url("/reflect?header=X-Secret&gzip=1"), headers={"X-Secret": "abcdefgh12345"}, stream=True
        )
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(r.raw.read()) == b"abcdefgh12345"
        r.close()
        r = s.get(
            tls.url("/reflect?header=X-Secret&chunk=3&delay=0.01"), headers={"X-Secret": "abcdefgh12345"}
        )
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert r.text == "abcdefgh12345"


def test_sse_events_arrive_in_order_and_spaced(tls: TLSUpstream) -> None:
    delay = 0.4
    with _session(tls) as s:
        start = time.monotonic()
        with s.get(tls.url(f"/sse?n=3&delay={delay}&reflect=X-R"), headers={"X-R": "v"}, stream=True) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert "Content-Length" not in r.headers
            events: list[tuple[float, dict[str, object]]] = []
            for line in r.iter_lines(chunk_size=1):
                if line.startswith(b"data: "):
                    events.append((time.monotonic() - start, json.loads(line[6:])))
    assert [e[1] for e in events] == [{"i": i, "reflected": "v"} for i in range(3)]
    # The first event is flushed at once (well before the last one); later events come later.
    assert events[0][0] < events[2][0]
    assert events[2][0] >= delay  # two delays elapsed before the third event


@pytest.mark.parametrize("chunked", [False, True])
def test_download(tls: TLSUpstream, chunked: bool) -> None:
    n = 1_000_003
    with _session(tls) as s:
        r = s.get(tls.url(f"/download?bytes={n}{'&chunked=1' if chunked else ''}"))
    assert r.content == download_payload(n)
    if chunked:
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in r.headers
    else:
        assert r.headers["Content-Length"] == str(n)


def test_redirect_cookie_status(tls: TLSUpstream) -> None:
    with _session(tls) as s:
        r = s.get(tls.url("/redirect?to=https://example.invalid/x"), allow_redirects=False)
        assert r.status_code == 302
        assert r.headers["Location"] == "https://example.invalid/x"
        r = s.get(tls.url("/set-cookie"))
        assert r.headers["Set-Cookie"] == "session=abc"
        r = s.get(tls.url("/status/503"))
        assert r.status_code == 503
        assert r.json() == {"status": 503}
        assert s.get(tls.url("/status/204")).status_code == 204
        assert s.head(tls.url("/echo")).status_code == 200
        assert s.get(tls.url("/nope")).status_code == 404


def test_keep_alive_reuses_connection() -> None:
    with TLSUpstream() as up, _session(up) as s:
        for _ in range(5):
            assert s.get(up.url("/echo")).status_code == 200
        assert up.connection_count == 1
        assert len(up.requests_seen) == 5


def test_websocket_echo(tls: TLSUpstream) -> None:
    ctx = tls.client_ssl_context()
    with ws_connect(
        tls.ws_url(),
        ssl=ctx,
        additional_headers={"X-Ws": "hello"},
        proxy=None,
        compression=None,
        max_size=None,
    ) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["path"] == "/ws"
        assert hello["headers"]["x-ws"] == "hello"
        assert hello["headers"]["upgrade"].lower() == "websocket"
        ws.send("text message")
        assert ws.recv(timeout=5) == "text message"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        big = "x" * (3 << 20)
        ws.send(big)
        assert ws.recv(timeout=10) == big
    assert any(r["path"] == "/ws" for r in tls.requests_seen.snapshot())


def test_plain_upstream(plain: PlainUpstream) -> None:
    assert plain.url("/echo").startswith("http://127.0.0.1:")
    with requests.Session() as s:
        s.trust_env = False
        body = s.get(plain.url("/echo?q=1"), headers={"X-P": "1"}).json()
        assert body["scheme"] == "http"
        assert body["headers"]["x-p"] == "1"
        assert s.get(plain.url("/reflect?header=X-P"), headers={"X-P": "zz"}).headers["X-Reflected"] == "zz"
        assert s.get(plain.url("/download?bytes=10&chunked=1")).content == download_payload(10)
    with ws_connect(plain.ws_url(), proxy=None) as ws:
        assert json.loads(ws.recv(timeout=5))["path"] == "/ws"
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"


def test_plaintext_http10_client(plain: PlainUpstream) -> None:
    with socket.create_connection(("127.0.0.1", plain.port), timeout=5) as sock:
        sock.sendall(b"GET /sse?n=2&delay=0 HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert data.count(b"event: message") == 2


def test_shutdown_releases_port_and_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    up = TLSUpstream()
    with up:
        port = up.port
        # leave a connection open (keep-alive) and a stream hanging to check they do not block shutdown
        s = _session(up)
        assert s.get(up.url("/echo")).status_code == 200
        hanging = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.close()
    hanging.close()
    assert {t.ident for t in threading.enumerate()} <= before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not Path(up.ca_pem_path).exists()
    # the port can be bound again
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections linger in TIME_WAIT
        sock.bind(("127.0.0.1", port))


def test_shutdown_during_long_sse() -> None:
    with TLSUpstream() as up:
        s = _session(up)
        r = s.get(up.url("/sse?n=1000&delay=0.05"), stream=True)
        assert next(r.iter_lines()).startswith(b"id: 0")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 10
    r.close()
    s.close()


# ---- git over HTTPS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpUpstream]:
    root = tmp_path_factory.mktemp("git-root")
    make_bare_repo(root / "repo.git", commits=3)
    make_bare_repo(root / "push.git", commits=1)
    make_bare_repo(root / "big.git", commits=1, large_file_bytes=20 << 20)
    with GitHttpUpstream(root, username="x-access-token", password="gh-secret-token") as up:
        yield up
    assert up.errors == []
    # git (libcurl) negotiates HTTP/2 with this server when it can; both protocols carry the CGI.
    assert {r["http_version"] for r in up.requests_seen.snapshot()} <= {"HTTP/1.1", "HTTP/2"}


def _clone(
    up: GitHttpUpstream, tmp: Path, repo: str, userinfo: str | None
) -> subprocess.CompletedProcess[str]:
    dest = tmp / f"clone-{repo}-{time.monotonic_ns()}"
    return subprocess.run(
        ["git", "clone", "-q", up.clone_url(repo, host="localhost", userinfo=userinfo), str(dest)],
        env=git_env(tmp, GIT_SSL_CAINFO=up.ca_pem_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_git_clone_with_correct_credentials(git_server: GitHttpUpstream, tmp_path: Path) -> None:
    result = _clone(git_server, tmp_path, "repo.git", "x-access-token:gh-secret-token")
    assert result.returncode == 0, result.stderr
    clones = list(tmp_path.glob("clone-repo.git-*"))
    assert (clones[0] / "file-2.txt").read_text() == "content 2\n"
    log = subprocess.run(
        ["git", "-C", str(clones[0]), "log", "--oneline"],
        env=git_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert len(log.stdout.splitlines()) == 3


def test_git_clone_large_repo(git_server: GitHttpUpstream, tmp_path: Path) -> None:
    result = _clone(git_server, tmp_path, "big.git", "x-access-token:gh-secret-token")
    assert result.returncode == 0, result.stderr
    clone = next(tmp_path.glob("clone-big.git-*"))
    assert (clone / "large.bin").stat().st_size == 20 << 20


def test_git_clone_with_wrong_or_missing_credentials_fails(
    git_server: GitHttpUpstream, tmp_path: Path
) -> None:
    failures = git_server.auth_failures
    wrong = _clone(git_server, tmp_path, "repo.git", "x-access-token:wrong")
    assert wrong.returncode != 0
    missing = _clone(git_server, tmp_path, "repo.git", None)
    assert missing.returncode != 0
    assert git_server.auth_failures > failures


def test_git_push(git_server: GitHttpUpstream, tmp_path: Path) -> None:
    assert _clone(git_server, tmp_path, "push.git", "x-access-token:gh-secret-token").returncode == 0
    clone = next(tmp_path.glob("clone-push.git-*"))
    env = git_env(tmp_path, GIT_SSL_CAINFO=git_server.ca_pem_path)
    (clone / "pushed.txt").write_text("pushed\n")
    for args in (["add", "pushed.txt"], ["commit", "-q", "-m", "push me"], ["push", "-q", "origin", "HEAD"]):
        result = subprocess.run(["git", "-C", str(clone), *args], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    shown = subprocess.run(
        ["git", "--git-dir", str(git_server.root / "push.git"), "show", "HEAD:pushed.txt"],
        env=git_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert shown.stdout == "pushed\n"


def test_git_unauthenticated_request_gets_challenge(git_server: GitHttpUpstream) -> None:
    with _session(git_server) as s:
        r = s.get(git_server.url("/repo.git/info/refs?service=git-upload-pack"))
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="git"'
        ok = s.get(
            git_server.url("/repo.git/info/refs?service=git-upload-pack"),
            auth=("x-access-token", "gh-secret-token"),
        )
        assert ok.status_code == 200
        assert ok.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
