"""Bodies the proxy must see whole (SPEC §5.6 body substitution, a SigV4 payload hash) and the request
body limits, whatever the body's size and framing, on both request paths (`--fast-path on|off`) and
over HTTP/2 (the engine): a body over the engine's 1 MiB streaming threshold is still substituted
(never forwarded with its `{{KEY}}`), a body over --max-buffered-bytes is refused with 413
`body_too_large` and `limit_bytes` (by its length up front, or while a chunked one arrives), and a
chunked body crossing --max-request-bytes is refused with the real `limit_bytes`, whether the service
substitutes into bodies or not. Real server subprocesses, real HTTPS upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.proxy import wait_audit
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream

BODY_SECRET = "large-body-secret-value-4242"
TOKEN_SECRET = "large-body-bearer-value-4343"
BUFFERED = 3 << 20  # --max-buffered-bytes of the `big` servers
MIB = 1 << 20


def _server(tmp: Path, ca: trustme.CA, up: TLSUpstream, mode: str, *flags: str) -> ServerProc:
    s = ServerProc(tmp, ca, extra_args=("--fast-path", mode, "--rate-limits", "off", *flags))
    s.init()
    s.start()
    s.set_credential("LB_TOKEN", TOKEN_SECRET)
    s.set_credential("LB_BODY", BODY_SECRET)
    s.set_credential("LB_AWS_ID", "AKIALARGEBODY0000001")
    s.set_credential("LB_AWS_SECRET", "large-body-aws-secret-000000000000001")
    bearer = {"type": "bearer", "token": "LB_TOKEN"}
    s.add_service(
        {
            "name": "lb-subst",
            "host": "localhost",
            "port": up.port,
            "path": "/echo/subst",
            "auth": bearer,
            "substitutions": {"keys": ["LB_BODY"], "in": ["body"]},
        }
    )
    s.add_service(
        {"name": "lb-plain", "host": "localhost", "port": up.port, "path": "/echo/plain", "auth": bearer}
    )
    s.add_service(
        {
            "name": "lb-sqs",
            "host": "localhost",
            "port": up.port,
            "path": "/echo/sqs",
            "auth": {
                "type": "aws-sigv4",
                "service": "sqs",
                "region": "us-east-1",
                "access_key_id": "LB_AWS_ID",
                "secret_access_key": "LB_AWS_SECRET",
            },
        }
    )
    return s


@pytest.fixture(scope="module", params=["on", "off"])
def big(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    up: TLSUpstream,
) -> Iterator[ServerProc]:
    s = _server(
        tmp_path_factory.mktemp("lb-big"),
        upstream_ca,
        up,
        request.param,
        "--max-buffered-bytes",
        str(BUFFERED),
    )
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module", params=["on", "off"])
def small(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream_ca: trustme.CA,
    up: TLSUpstream,
) -> Iterator[ServerProc]:
    s = _server(
        tmp_path_factory.mktemp("lb-small"), upstream_ca, up, request.param, "--max-request-bytes", "1000"
    )
    try:
        yield s
    finally:
        s.stop()


def _client(srv: ServerProc, name: str, *, http2: bool = False) -> httpx.Client:
    token = srv.make_agent(name)
    return httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=60, http2=http2
    )


def _payload(size: int) -> bytes:
    """A JSON body of about `size` bytes with the placeholder at its very end."""
    return json.dumps({"pad": "p" * size, "k": "{{LB_BODY}}"}).encode()


def _chunks(data: bytes, size: int = 64 << 10) -> Iterator[bytes]:
    """The body without a length: chunked on HTTP/1.1, DATA frames only on HTTP/2."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _seen(up: TLSUpstream, path: str) -> list[bytes]:
    """The bodies the upstream got for `path` (each test clears the log first: `up` is shared by the
    servers of both modes)."""
    return [r["body"] for r in up.requests_seen.snapshot() if r["path"] == path]


def _too_large(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413, r.text[:300]
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == "body_too_large" and body["limit_bytes"] == limit, body


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_over_one_mib_is_substituted(big: ServerProc, up: TLSUpstream, framing: str) -> None:
    up.requests_seen.clear()
    path = f"/echo/subst/large-{framing}"
    data = _payload(2 * MIB)
    with _client(big, f"lb-sub-{framing}") as c:
        r = c.post(
            f"https://localhost:{up.port}{path}",
            content=data if framing == "length" else _chunks(data),
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 200, r.text[:300]
    (got,) = _seen(up, path)
    assert json.loads(got)["k"] == BODY_SECRET and b"{{LB_BODY}}" not in got
    assert r.json()["body_length"] == len(data) - len("{{LB_BODY}}") + len(BODY_SECRET)
    assert BODY_SECRET not in r.text  # the echo is redacted on its way back


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_over_the_buffer_limit_is_refused(big: ServerProc, up: TLSUpstream, framing: str) -> None:
    up.requests_seen.clear()
    path = f"/echo/subst/too-large-{framing}"
    data = _payload(BUFFERED + MIB)
    with _client(big, f"lb-big-{framing}") as c:
        r = c.post(
            f"https://localhost:{up.port}{path}",
            content=data if framing == "length" else _chunks(data),
            headers={"Content-Type": "application/json"},
        )
    _too_large(r, BUFFERED)
    assert _seen(up, path) == []  # never forwarded, in part or unsubstituted
    rec = wait_audit(big.home, path=path)
    assert rec["error"] == "body_too_large" and rec["status"] == 413


def test_http2_bodies_over_one_mib_are_substituted_or_refused(big: ServerProc, up: TLSUpstream) -> None:
    up.requests_seen.clear()
    data = _payload(2 * MIB)
    with _client(big, "lb-h2", http2=True) as c:
        base = f"https://localhost:{up.port}/echo/subst/h2"
        for suffix, content in (("-length", data), ("-frames", _chunks(data))):
            r = c.post(base + suffix, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.http_version == "HTTP/2", r.text[:300]
            (got,) = _seen(up, "/echo/subst/h2" + suffix)
            assert json.loads(got)["k"] == BODY_SECRET
        r = c.post(base + "-over", content=_chunks(_payload(BUFFERED + MIB)))
    _too_large(r, BUFFERED)
    assert _seen(up, "/echo/subst/h2-over") == []


def test_a_chunked_sigv4_body_over_the_signing_buffer_is_refused(big: ServerProc, up: TLSUpstream) -> None:
    """A SigV4 service that requires a signed payload hash: a chunked body past 1 MiB was streamed
    (unsigned) by the engine; it must be refused as on the fast path."""
    up.requests_seen.clear()
    path = "/echo/sqs/large"
    with _client(big, "lb-sqs") as c:
        r = c.post(f"https://localhost:{up.port}{path}", content=_chunks(b"a" * (MIB + 4096)))
    _too_large(r, MIB)
    assert _seen(up, path) == []


def test_a_chunked_body_to_a_substituting_service_respects_the_request_limit(
    small: ServerProc, up: TLSUpstream
) -> None:
    up.requests_seen.clear()
    with _client(small, "lb-small-subst") as c:
        r = c.post(f"https://localhost:{up.port}/echo/subst/over", content=_chunks(b"z" * 5000, 700))
        _too_large(r, 1000)
        ok = c.post(f"https://localhost:{up.port}/echo/subst/under", content=_chunks(_payload(100), 50))
    assert _seen(up, "/echo/subst/over") == []
    assert ok.status_code == 200 and json.loads(_seen(up, "/echo/subst/under")[0])["k"] == BODY_SECRET


def test_a_chunked_body_cut_at_the_request_limit_says_the_limit(small: ServerProc, up: TLSUpstream) -> None:
    up.requests_seen.clear()
    with _client(small, "lb-small-plain") as c:
        r = c.post(f"https://localhost:{up.port}/echo/plain/over", content=_chunks(b"z" * 5000, 700))
    _too_large(r, 1000)
    assert r.json()["message"] == "the request body is over the limit"
    assert _seen(up, "/echo/plain/over") == []
