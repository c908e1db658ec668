"""A client that does not trust the agent-vault CA (the most common setup mistake) is visible: the
server logs one warning naming the SNI, and counts it as `decision="error"`, `code="client_tls"`
(SPEC §13) -- on the engine (HTTP/2-capable clients, curl) and on the fast path (http/1.1-only ALPN).
The real server, real TLS clients trusting only another CA; never a token in the log."""

from __future__ import annotations

import re
import ssl
import subprocess
from collections.abc import Iterator

import pytest
import trustme
from helpers.proxy import RawConn, basic
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

WARNING = "client TLS handshake failed for {sni}"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(
        tmp_path_factory.mktemp("tlsfail"),
        upstream_ca,
        extra_args=("--fast-path", "on", "--rate-limits", "off"),
    ) as s:
        s.set_credential("TLS_TOKEN", "tls-failure-test-value-1")
        s.add_service(
            {
                "name": "tls-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "TLS_TOKEN"},
            }
        )
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    return srv.make_agent("tls-bot")


def _metric(srv: ServerProc, name: str, **labels: str) -> float:
    with srv.http() as c:
        text = c.get("/metrics").text
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def _counts(srv: ServerProc) -> tuple[float, float]:
    return (
        _metric(srv, "agent_vault_denials_total", vault="", code="client_tls"),
        _metric(srv, "agent_vault_proxy_requests_total", vault="", decision="error", status_class="err"),
    )


def _untrusting_handshake(srv: ServerProc, token: str, port: int, sni: str, alpn: list[str]) -> None:
    """CONNECT (MITM'd: a service matches), then TLS trusting only the upstream test CA: it fails."""
    with RawConn(srv.proxy_port) as conn:
        assert conn.connect(f"localhost:{port}", {"Proxy-Authorization": basic(token)}).status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.start_tls(sni, srv.upstream_ca_file, alpn=alpn)


@pytest.mark.parametrize(
    ("path", "alpn"), [("engine", ["h2", "http/1.1"]), ("fast", ["http/1.1"])], ids=["engine", "fast"]
)
def test_untrusted_ca_is_logged_and_counted(
    srv: ServerProc, token: str, up: TLSUpstream, path: str, alpn: list[str]
) -> None:
    before = _counts(srv)
    sni = f"{path}-untrusted.test"
    _untrusting_handshake(srv, token, up.port, sni, alpn)
    line = wait_until(
        lambda: next((x for x in srv.stderr_text().splitlines() if WARNING.format(sni=sni) in x), None),
        f"the {path} path's client_tls warning",
    )
    assert line is not None and "WARNING" in line.upper() and "agent-vault ca fetch" in line
    wait_until(lambda: _counts(srv) == (before[0] + 1, before[1] + 1), "the client_tls counts")
    assert token not in srv.stderr_text()


def test_curl_without_the_ca(srv: ServerProc, token: str, up: TLSUpstream) -> None:
    """The everyday case: curl through the proxy, trusting only the system store."""
    before = _counts(srv)
    cp = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--max-time", "20", "--proxy", srv.proxy_url(token)]
        + ["--cacert", str(srv.upstream_ca_file), f"https://localhost:{up.port}/echo/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cp.returncode == 60, cp.stderr  # curl: peer certificate cannot be authenticated
    wait_until(lambda: WARNING.format(sni="localhost") in srv.stderr_text(), "curl's client_tls warning")
    wait_until(lambda: _counts(srv)[0] == before[0] + 1, "curl's client_tls count")
    assert token not in srv.stderr_text()
