"""HTTP/1 connection semantics through the proxy (RFC 9112 §9.3, §9.6), raw sockets.

A client that sends `Connection: close` reads the response to EOF: the proxy must close the client
connection after the response, in every ingress form (CONNECT + TLS, CONNECT + plain HTTP,
absolute-form `http://` and `https://`), for injected and proxy-generated answers alike. Without it,
HTTP/1.1 stays keep-alive. One server for the module: an injecting service on the TLS upstream; the
plain upstream is an unlisted host under `unmatched_policy: passthrough` (intercepted, nothing
injected).
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Iterator

import pytest
import trustme
from helpers.proxy import RawConn, basic
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import PlainUpstream, TLSUpstream

pytestmark = pytest.mark.e2e

SECRET = "sk-close-semantics-0123456789"


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainUpstream]:
    with PlainUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("close"), upstream_ca) as s:
        s.set_credential("API_TOKEN", SECRET)
        s.add_service(
            {
                "name": "tls-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
            }
        )
        with s.http() as c:
            c.patch(
                "/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "passthrough"}
            ).raise_for_status()
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    return srv.make_agent("close-bot")


def _closed_by_peer(conn: RawConn, within: float = 5.0) -> bool:
    """True if the proxy closes the connection (EOF) within `within` seconds; False if it stays open.
    Uses select on the socket, so a connection that stays open can still be used afterwards."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([conn.sock], [], [], left)[0]:
            return False
        try:
            if conn.sock.recv(4096) == b"":
                return True
        except ssl.SSLWantReadError:
            continue
        except OSError:
            return True
    return False


def _mitm(srv: ServerProc, token: str, target: str, conn: RawConn, tls_host: str | None) -> None:
    assert conn.connect(target, {"Proxy-Authorization": basic(token)}).status == 200
    if tls_host is not None:
        conn.start_tls(tls_host, srv.ca_bundle)


def test_connect_tls_connection_close(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    with RawConn(srv.proxy_port) as conn:
        _mitm(srv, token, f"localhost:{up.port}", conn, "localhost")
        r = conn.request("GET", "/echo/close", {"Host": f"localhost:{up.port}", "Connection": "close"})
        assert r.status == 200 and r.headers.get("connection") == "close"
        assert SECRET not in r.body.decode()
        assert _closed_by_peer(conn)


def test_connect_tls_keeps_alive_by_default(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    with RawConn(srv.proxy_port) as conn:
        _mitm(srv, token, f"localhost:{up.port}", conn, "localhost")
        r = conn.request("GET", "/echo/one", {"Host": f"localhost:{up.port}"})
        assert r.status == 200 and r.headers.get("connection") != "close"
        assert not _closed_by_peer(conn, within=1.0)
        assert conn.request("GET", "/echo/two", {"Host": f"localhost:{up.port}"}).status == 200


def test_connect_plain_http_connection_close(srv: ServerProc, plain: PlainUpstream, token: str) -> None:
    with RawConn(srv.proxy_port) as conn:
        _mitm(srv, token, f"127.0.0.1:{plain.port}", conn, None)
        r = conn.request("GET", "/echo/plain", {"Host": f"127.0.0.1:{plain.port}", "Connection": "close"})
        assert r.status == 200
        assert _closed_by_peer(conn)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_absolute_form_connection_close(
    srv: ServerProc, up: TLSUpstream, plain: PlainUpstream, token: str, scheme: str
) -> None:
    authority = f"127.0.0.1:{plain.port}" if scheme == "http" else f"localhost:{up.port}"
    with RawConn(srv.proxy_port) as conn:
        headers = {"Host": authority, "Proxy-Authorization": basic(token), "Connection": "close"}
        r = conn.request("GET", f"{scheme}://{authority}/echo/abs", headers)
        assert r.status == 200 and r.headers.get("connection") == "close"
        assert _closed_by_peer(conn)


def test_absolute_form_keeps_alive_by_default(srv: ServerProc, plain: PlainUpstream, token: str) -> None:
    authority = f"127.0.0.1:{plain.port}"
    with RawConn(srv.proxy_port) as conn:
        headers = {"Host": authority, "Proxy-Authorization": basic(token)}
        assert conn.request("GET", f"http://{authority}/echo/a", headers).status == 200
        assert not _closed_by_peer(conn, within=1.0)
        assert conn.request("GET", f"http://{authority}/echo/b", headers).status == 200


def test_proxy_answer_honours_connection_close(srv: ServerProc, up: TLSUpstream) -> None:
    """A 407 for an absolute-form request with `Connection: close` also ends the connection."""
    authority = f"localhost:{up.port}"
    with RawConn(srv.proxy_port) as conn:
        headers = {"Host": authority, "Proxy-Authorization": basic("av_bad_token"), "Connection": "close"}
        r = conn.request("GET", f"https://{authority}/echo/x", headers)
        assert r.status == 407 and r.headers.get("connection") == "close"
        assert _closed_by_peer(conn)


def test_http10_request_is_answered_and_closed(srv: ServerProc, plain: PlainUpstream, token: str) -> None:
    authority = f"127.0.0.1:{plain.port}"
    with RawConn(srv.proxy_port) as conn:
        req = (
            f"GET http://{authority}/echo/old HTTP/1.0\r\n"
            f"Host: {authority}\r\nProxy-Authorization: {basic(token)}\r\n\r\n"
        )
        conn.send(req.encode())
        data = b""
        conn.sock.settimeout(5)
        while chunk := conn.sock.recv(65536):
            data += chunk
        assert data.split(b"\r\n", 1)[0].split()[1] == b"200"
