"""Unauthenticated clients and hostile upstream heads (issue 22): nothing they send grows memory
without a bound, and no error body carries their bytes.

* the proxy port caps request line + headers (431 JSON, connection closed), before any hook runs;
* connections that do not authenticate within `--auth-timeout` are closed; at most
  `--max-unauthenticated` of them are open at once, and the API stays responsive meanwhile;
* an upstream's response head is capped too; a malformed head that repeats the injected value comes
  back as a 502 whose body names a cause from a fixed list, never the upstream's bytes.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme
from helpers.proxy import Resp, basic
from helpers.wait import wait_until
from security.conftest import Sweep, SweptServer, new_secret, proxy_error, start_server

V: dict[str, str] = {}


class HostileHeadUpstream:
    """A TLS server that reads one request head and answers with a head chosen by the request path:
    `/echo-bad` -> a malformed status line repeating the request's Authorization header;
    `/endless` -> a header block that never ends (1 MiB of header lines, then it waits)."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("*.upstream.test", "localhost").configure_cert(self.ctx)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.seen.append(head)
            lines = head.split(b"\r\n")
            path = lines[0].split(b" ")[1]
            auth = next(
                (ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"authorization:")),
                b"",
            )
            if path == b"/echo-bad":
                conn.sendall(
                    b"HTTP/1.1 200 " + auth + b"\r\nX: " + auth + b"\r\nbroken header " + auth + b"\r\n\r\n"
                )
            elif path == b"/endless":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
                for _ in range(1024):
                    conn.sendall(line)
                time.sleep(5)
            conn.close()
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def hostile(upstream_ca: trustme.CA) -> Iterator[HostileHeadUpstream]:
    up = HostileHeadUpstream(upstream_ca)
    yield up
    up.close()


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    sweep: Sweep,
    hostile: HostileHeadUpstream,
) -> Iterator[SweptServer]:
    args = ("--auth-timeout", "2", "--max-unauthenticated", "20")
    for s in start_server(tmp_path_factory, upstream_ca, sweep, "preauth", extra_args=args):
        V["KEY"] = new_secret()
        s.set_credential("HOSTILE_KEY", V["KEY"])
        s.add_service(
            {
                "name": "hostile",
                "host": "api.upstream.test",
                "port": hostile.port,
                "auth": {"type": "bearer", "token": "HOSTILE_KEY"},
            }
        )
        V["token"] = s.make_agent("preauth-bot")
        yield s


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """EOF (or reset) from the proxy within `seconds`; answer bytes before it are read and dropped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except OSError:
            return True
    return False


def _connect_line(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {basic(V['token'])}\r\n\r\n".encode()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_oversized_header_block_gets_431_and_is_cut(srv: SweptServer, sweep: Sweep) -> None:
    assert srv.proc is not None
    before = _rss_kib(srv.proc.pid)
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
        s.sendall(b"GET http://api.upstream.test/ HTTP/1.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 << 20:  # a 64 MiB header block: the proxy must cut it long before
                s.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        answer = _read_answer(s)
    assert sent < 8 << 20, f"the proxy kept reading a header block of {sent} bytes"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    headers = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (ln.decode().partition(":") for ln in head.split(b"\r\n")[1:])
    )
    sweep.record("431 answer", answer)
    proxy_error(431, headers, body.split(b"\r\n\r\n")[0], "headers_too_large")
    assert _rss_kib(srv.proc.pid) - before < 64 << 10  # under 64 MiB of growth
    assert srv.alive()


def test_oversized_request_line_gets_431(srv: SweptServer, sweep: Sweep) -> None:
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
        s.sendall(b"GET http://api.upstream.test/" + b"p" * (128 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_answer(s)
    sweep.record("431 request line", answer)
    assert answer.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in answer


def test_silent_connection_is_closed_after_the_auth_timeout(srv: SweptServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
        start = time.monotonic()
        assert _closed_within(s, 8)
        assert time.monotonic() - start >= 1.5  # not at once: the client had its 2 s


def test_slow_header_drip_is_closed_after_the_auth_timeout(srv: SweptServer) -> None:
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
        s.sendall(b"CONNECT api.upstream.test:443 HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # slowloris: one header line every 0.2 s, never the blank line
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                closed = True
                break
            if _closed_within(s, 0.2):
                closed = True
                break
        assert closed


def test_authenticated_idle_connection_stays_open(srv: SweptServer, hostile: HostileHeadUpstream) -> None:
    with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
        s.sendall(_connect_line(f"api.upstream.test:{hostile.port}"))
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert not _closed_within(s, 3.5)  # past the 2 s pre-auth deadline


def test_unauthenticated_connections_are_capped_and_the_api_answers(srv: SweptServer) -> None:
    socks = [socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) for _ in range(60)]
    closed: set[int] = set()

    def over_the_cap_closed() -> bool:
        closed.update(i for i, s in enumerate(socks) if i not in closed and _closed_within(s, 0.01))
        return len(closed) >= 60 - 20 - 2  # over the cap of 20: closed unread

    try:
        wait_until(over_the_cap_closed, "the connections over the cap to be closed", timeout=5)
        t0 = time.monotonic()
        r = httpx.get(srv.api + "/health", timeout=5)
        assert r.status_code == 200 and time.monotonic() - t0 < 2
    finally:
        for s in socks:
            s.close()

    def served() -> bool:
        """An agent connects and is served (the proxy frees a pre-auth slot once it sees a close)."""
        try:
            with socket.create_connection(("127.0.0.1", srv.proxy_port), timeout=10) as s:
                s.sendall(_connect_line("api.upstream.test:443"))
                s.settimeout(10)
                return s.recv(4096).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_until(served, "an agent to be served again once the idle sockets are gone", timeout=10, interval=0.2)


def _get_through_mitm(srv: SweptServer, hostile: HostileHeadUpstream, path: str) -> Resp:
    """GET `path` from the hostile upstream as an agent would: CONNECT, TLS to the proxy's CA, HTTP/1."""
    authority = f"api.upstream.test:{hostile.port}"
    with srv.raw() as conn:
        assert conn.connect(authority, {"Proxy-Authorization": basic(V["token"])}).status == 200
        conn.start_tls("api.upstream.test", srv.ca_bundle)
        return conn.request("GET", path, {"Host": authority})


def test_malformed_upstream_head_echoing_the_value_is_not_reflected(
    srv: SweptServer, sweep: Sweep, hostile: HostileHeadUpstream
) -> None:
    r = _get_through_mitm(srv, hostile, "/echo-bad")
    assert any(V["KEY"].encode() in h for h in hostile.seen)  # the upstream did get the value
    assert r.status == 502
    code = proxy_error(r.status, r.headers, r.body)
    assert code.startswith("upstream_")
    assert V["KEY"] not in r.body.decode() and "broken header" not in r.body.decode()
    assert r.json()["cause"] == "malformed response from the upstream"


def test_endless_upstream_head_is_cut(srv: SweptServer, sweep: Sweep, hostile: HostileHeadUpstream) -> None:
    assert srv.proc is not None
    before = _rss_kib(srv.proc.pid)
    r = _get_through_mitm(srv, hostile, "/endless")
    assert r.status == 502 and r.json()["cause"] == "the upstream's response head is over the proxy's limit"
    assert _rss_kib(srv.proc.pid) - before < 32 << 10
