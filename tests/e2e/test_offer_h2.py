"""`--offer-h2 off` (issue #24's HTTP/2 answer): the proxy offers agents only HTTP/1.1 on intercepted
connections, so clients that would negotiate h2 (curl, git, httpx with http2=True) fall back to
HTTP/1.1 and, with the fast path on, are served by it; injection and the audit record are unchanged.
The default (on) keeps h2 on the engine (tests/e2e/test_fast_path.py, tests/e2e/test_clients.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.env import base_env
from helpers.proxy import wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

SECRET = "offer-h2-secret-value-7373"


def _server(tmp: Path, ca: trustme.CA, port: int, *flags: str) -> ServerProc:
    s = ServerProc(tmp, ca, extra_args=("--offer-h2", "off", "--rate-limits", "off", *flags))
    s.init()
    s.start()
    s.set_credential("H2_TOKEN", SECRET)
    s.add_service(
        {"name": "h2-api", "host": "localhost", "port": port, "auth": {"type": "bearer", "token": "H2_TOKEN"}}
    )
    return s


@pytest.fixture(scope="module")
def lean(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    s = _server(tmp_path_factory.mktemp("offer-h2-lean"), upstream_ca, up.port, "--fast-path", "on")
    try:
        yield s
    finally:
        s.stop()


def _h2_client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=30, http2=True
    )


def test_an_h2_client_falls_back_to_http11_and_goes_lean(lean: ServerProc, up: TLSUpstream) -> None:
    token = lean.make_agent("h2-bot")
    with _h2_client(lean, token) as c:
        r = c.get(f"https://localhost:{up.port}/echo/h2-lean")
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:H2_TOKEN]"
    rec = wait_audit(lean.home, path="/echo/h2-lean")
    assert rec["decision"] == "injected" and rec["served_by"] == "fast" and rec["http_version"] == "HTTP/1.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not found on PATH")
def test_curl_falls_back_to_http11_and_goes_lean(lean: ServerProc, up: TLSUpstream) -> None:
    token = lean.make_agent("curl-bot")
    p = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "--proxy",
            lean.proxy_url(token),
            "--cacert",
            str(lean.ca_bundle),
            "-w",
            "\n%{http_code} %{http_version}",
            f"https://localhost:{up.port}/echo/curl-lean",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env(lean.home.parent),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.rsplit("\n", 1)[-1] == "200 1.1"  # libcurl offers h2 first; the proxy said http/1.1
    rec = wait_audit(lean.home, path="/echo/curl-lean")
    assert rec["decision"] == "injected" and rec["served_by"] == "fast"


def test_with_the_fast_path_off_the_engine_speaks_http11_too(
    tmp_path: Path, upstream_ca: trustme.CA, up: TLSUpstream
) -> None:
    s = _server(tmp_path, upstream_ca, up.port, "--fast-path", "off")
    try:
        with _h2_client(s, s.make_agent("engine-bot")) as c:
            r = c.get(f"https://localhost:{up.port}/echo/h2-engine")
        assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        rec = wait_audit(s.home, path="/echo/h2-engine")
        assert rec["decision"] == "injected" and "served_by" not in rec
    finally:
        s.stop()


def test_offer_h2_flag_is_validated(tmp_path: Path) -> None:
    env = base_env(tmp_path, AGENT_VAULT_HOME=str(tmp_path / "h"))
    p = subprocess.run(
        [sys.executable, "-m", "agent_vault", "server", "--offer-h2", "maybe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert "offer_h2" in p.stderr and "on or off" in p.stderr
    assert "Traceback" not in p.stderr
