"""Egress safety and limits (SPEC §5.10, §14.7): the SSRF guard without --allow-net, rate limits
(strict / off), the request body limit. Real server subprocesses with those flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import trustme
from helpers.proxy import RawConn, basic, wait_audit
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import PlainUpstream, TLSUpstream
from helpers.wait import wait_until

SECRET = "limits-secret-value-5555"
TOKENS: list[str] = []


@pytest.fixture(scope="module")
def plain() -> Iterator[PlainUpstream]:
    with PlainUpstream() as u:
        yield u


def _setup(s: ServerProc, up: TLSUpstream, plain: PlainUpstream) -> None:
    s.set_credential("LIMIT_TOKEN", SECRET)
    s.add_service(
        {
            "name": "tls-api",
            "host": "localhost",
            "port": up.port,
            "auth": {"type": "bearer", "token": "LIMIT_TOKEN"},
        }
    )
    s.add_service(
        {
            "name": "plain-api",
            "host": "127.0.0.1",
            "port": plain.port,
            "auth": {"type": "bearer", "token": "LIMIT_TOKEN"},
            "allow_http": True,  # services are HTTPS-only unless they opt in
        }
    )


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream, plain: PlainUpstream
) -> Iterator[ServerProc]:
    """No --allow-net: every loopback upstream is blocked. Rate limits off."""
    tmp = tmp_path_factory.mktemp("guarded")
    with ServerProc(tmp, upstream_ca, allow_net=False, extra_args=("--rate-limits", "off")) as s:
        _setup(s, up, plain)
        yield s


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream, plain: PlainUpstream
) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("strict")
    with ServerProc(
        tmp, upstream_ca, extra_args=("--rate-limits", "strict", "--max-request-bytes", "1000")
    ) as s:
        _setup(s, up, plain)
        yield s


def _agent(s: ServerProc, name: str) -> str:
    t = s.make_agent(name)
    TOKENS.append(t)
    return t


def _err(status: int, headers: dict[str, str] | httpx.Headers, body: dict[str, object], code: str) -> None:
    assert headers["x-agent-vault-proxy-error"] == "true"
    assert body["error"] == code, body


# ---- SSRF -------------------------------------------------------------------------------------


def test_mitm_target_on_loopback_is_blocked_inside_tls(guarded: ServerProc, up: TLSUpstream) -> None:
    t = _agent(guarded, "ssrf-bot")
    before = up.connection_count
    with httpx.Client(proxy=guarded.proxy_url(t), verify=str(guarded.ca_bundle), trust_env=False) as c:
        r = c.get(f"https://localhost:{up.port}/echo")
    assert r.status_code == 403
    body = r.json()
    _err(r.status_code, r.headers, body, "ssrf_blocked")
    assert body["address"] == "127.0.0.1" and body["address_class"] == "loopback"
    assert "localhost resolves to 127.0.0.1 (loopback)" in body["message"] and "--allow-net" in body["hint"]
    assert up.connection_count == before


def test_tunnel_to_loopback_is_refused_before_tls(guarded: ServerProc, up: TLSUpstream) -> None:
    t = _agent(guarded, "ssrf-tunnel-bot")
    before = up.connection_count
    with RawConn(guarded.proxy_port) as conn:  # no service matches 127.0.0.1:<tls port>: a tunnel
        r = conn.connect(f"127.0.0.1:{up.port}", {"Proxy-Authorization": basic(t)})
    assert r.status == 403
    _err(r.status, r.headers, r.json(), "ssrf_blocked")
    assert r.json()["address_class"] == "loopback"
    assert up.connection_count == before


def test_absolute_form_to_loopback_and_metadata_is_blocked(guarded: ServerProc, plain: PlainUpstream) -> None:
    t = _agent(guarded, "ssrf-abs-bot")
    cases = [
        (f"127.0.0.1:{plain.port}", "loopback"),
        ("169.254.169.254", "metadata"),
        ("[fd00:ec2::254]", "metadata"),
        ("100.100.100.200", "metadata"),
        ("10.1.2.3", "private"),
        ("[::ffff:127.0.0.1]:80", "loopback"),
        ("2130706433", "loopback"),
    ]
    for authority, cls in cases:
        with RawConn(guarded.proxy_port) as conn:
            r = conn.request(
                "GET",
                f"http://{authority}/latest/meta-data",
                {"Host": authority, "Proxy-Authorization": basic(t)},
            )
        assert r.status == 403, (authority, r.body)
        _err(r.status, r.headers, r.json(), "ssrf_blocked")
        assert r.json()["address_class"] == cls, authority
    assert plain.requests_seen.snapshot() == []


def test_metadata_stays_blocked_with_loopback_allowed(strict: ServerProc) -> None:
    """--allow-net 127.0.0.0/8 does not open 169.254.169.254 (metadata needs an exact entry)."""
    t = _agent(strict, "metadata-bot")
    with RawConn(strict.proxy_port) as conn:
        r = conn.request(
            "GET", "http://169.254.169.254/", {"Host": "169.254.169.254", "Proxy-Authorization": basic(t)}
        )
    assert r.status == 403 and r.json()["address_class"] == "metadata"


def test_rate_limits_off_never_limit(guarded: ServerProc, plain: PlainUpstream) -> None:
    t = _agent(guarded, "unlimited-bot")
    statuses = set()
    with RawConn(guarded.proxy_port) as conn:  # 600 > the default burst (500) and the strict one (100)
        for _ in range(600):
            r = conn.request(
                "GET",
                f"http://127.0.0.1:{plain.port}/echo",
                {"Host": f"127.0.0.1:{plain.port}", "Proxy-Authorization": basic(t)},
            )
            statuses.add(r.status)
    assert statuses == {403}  # every one reached the SSRF guard, which runs after the limiter


# ---- rate limits and body size ----------------------------------------------------------------


def _burst(c: httpx.Client, url: str, *, rounds: int = 25, width: int = 8) -> list[httpx.Response]:
    """Up to `rounds` x `width` concurrent GETs, stopping after the first round with a 429: fast enough
    to outrun the strict refill (20/s) even on a loaded machine, bounded either way."""
    out: list[httpx.Response] = []
    with ThreadPoolExecutor(width) as pool:
        for _ in range(rounds):
            out += list(pool.map(lambda _i: c.get(url), range(width)))
            if any(r.status_code == 429 for r in out):
                break
    return out


def test_strict_request_rate_limit(strict: ServerProc, up: TLSUpstream) -> None:
    t = _agent(strict, "burst-bot")
    up.requests_seen.clear()
    with httpx.Client(proxy=strict.proxy_url(t), verify=str(strict.ca_bundle), trust_env=False) as c:
        responses = _burst(c, f"https://localhost:{up.port}/status/204")
    codes = [r.status_code for r in responses]
    limited = next((r for r in responses if r.status_code == 429), None)
    assert limited is not None, codes
    assert codes.count(204) >= 100  # burst 100 (refilling at 20/s while the burst runs)
    # SPEC §14.7: a rate-limited request never reaches the upstream; exactly the answered ones did
    assert len(up.requests_seen.snapshot()) == codes.count(204) == len(codes) - codes.count(429)
    body = limited.json()
    _err(429, limited.headers, body, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
    assert body["limiter"] == "proxy_requests"
    other = _agent(strict, "calm-bot")  # keyed by token: another agent is unaffected
    with httpx.Client(proxy=strict.proxy_url(other), verify=str(strict.ca_bundle), trust_env=False) as c:
        assert c.get(f"https://localhost:{up.port}/status/204").status_code == 204


def test_strict_concurrent_connection_limit(
    strict: ServerProc, up: TLSUpstream, plain: PlainUpstream
) -> None:
    """32 open connections per token (strict), whether CONNECT tunnels or absolute-form keep-alive."""
    t = _agent(strict, "many-conns-bot")
    plain_target = f"http://127.0.0.1:{plain.port}/echo"
    head = {"Host": f"127.0.0.1:{plain.port}", "Proxy-Authorization": basic(t)}
    held: list[RawConn] = []
    try:
        for i in range(32):
            conn = RawConn(strict.proxy_port)
            held.append(conn)
            if i % 2:
                assert conn.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(t)}).status == 200
            else:
                assert conn.request("GET", plain_target, head).status == 200
        plain_seen, plain_conns, up_conns = (
            len(plain.requests_seen.snapshot()),
            plain.connection_count,
            up.connection_count,
        )
        with RawConn(strict.proxy_port) as extra:
            refused = extra.request("GET", plain_target, head)
        assert refused.status == 429
        _err(429, refused.headers, refused.json(), "rate_limited")
        assert refused.json()["limiter"] == "concurrent"
        with RawConn(strict.proxy_port) as extra:
            assert extra.connect(f"localhost:{up.port}", {"Proxy-Authorization": basic(t)}).status == 429
        # SPEC §14.7: neither refusal opened an upstream connection (nor sent a request)
        assert (len(plain.requests_seen.snapshot()), plain.connection_count) == (plain_seen, plain_conns)
        assert up.connection_count == up_conns
        other = _agent(strict, "few-conns-bot")  # keyed by token: another agent is unaffected
        with RawConn(strict.proxy_port) as conn:
            assert (
                conn.request("GET", plain_target, {**head, "Proxy-Authorization": basic(other)}).status == 200
            )
        held.pop().close()  # a closed connection frees its slot

        def slot_free() -> bool:
            with RawConn(strict.proxy_port) as extra:
                return extra.request("GET", plain_target, head).status == 200

        wait_until(slot_free, "the closed connection's slot to be freed", timeout=5, interval=0.1)
    finally:
        for conn in held:
            conn.close()


def test_rate_limits_per_vault(strict: ServerProc, up: TLSUpstream) -> None:
    """`vault settings --rate-limits off` lifts the server's strict profile for that vault only."""
    owner = {**strict.env, "AGENT_VAULT_TOKEN": strict.owner_token}
    strict.cli("vault", "create", "relaxed", env=owner)
    strict.set_credential("LIMIT_TOKEN", SECRET, vault="relaxed")
    strict.add_service(
        {
            "name": "tls-api",
            "host": "localhost",
            "port": up.port,
            "auth": {"type": "bearer", "token": "LIMIT_TOKEN"},
        },
        vault="relaxed",
    )
    out = strict.cli(
        "vault",
        "settings",
        "--vault",
        "relaxed",
        "--rate-limits",
        "off",
        "--password-stdin",
        input=OWNER_PASSWORD,
        env=owner,
    )
    assert "rate_limits: off" in out.stdout
    t = strict.make_agent("relaxed-bot", vaults=("default", "relaxed"))  # strict default vault too
    TOKENS.append(t)

    def burst(vault: str) -> list[int]:
        with httpx.Client(
            proxy=strict.proxy_url(t, vault), verify=str(strict.ca_bundle), trust_env=False
        ) as c:
            return [r.status_code for r in _burst(c, f"https://localhost:{up.port}/status/204")]

    assert set(burst("relaxed")) == {204}
    assert 429 in burst("default")  # strict (burst 100) still applies there
    bad = strict.cli(
        "vault", "settings", "--vault", "relaxed", "--rate-limits", "loose", check=False, env=owner
    )
    assert bad.returncode == 2 and "--rate-limits" in bad.stderr


def test_failed_auth_limit_does_not_count_probes(strict: ServerProc, plain: PlainUpstream) -> None:
    target = f"http://127.0.0.1:{plain.port}/echo"
    with RawConn(strict.proxy_port) as conn:
        probes = {conn.request("GET", target, {"Host": f"127.0.0.1:{plain.port}"}).status for _ in range(15)}
    assert probes == {407}
    bad = basic("av_agt_" + "b" * 43)
    answers = []
    with RawConn(strict.proxy_port) as conn:
        for _ in range(12):
            answers.append(
                conn.request("GET", target, {"Host": f"127.0.0.1:{plain.port}", "Proxy-Authorization": bad})
            )
    assert [r.status for r in answers[:10]] == [407] * 10 and [r.status for r in answers[10:]] == [429, 429]
    # Retry-After is the real wait: the first failure leaves the 5-minute window in ~300 s, not 60
    waits = [int(r.headers["retry-after"]) for r in answers[10:]]
    assert all(240 <= w <= 301 for w in waits), waits
    assert [r.json()["retry_after"] for r in answers[10:]] == waits


def test_body_over_the_limit_is_refused_before_reading(strict: ServerProc, plain: PlainUpstream) -> None:
    t = _agent(strict, "big-body-bot")
    plain.requests_seen.clear()
    with RawConn(strict.proxy_port) as conn:
        r = conn.request(
            "POST",
            f"http://127.0.0.1:{plain.port}/echo",
            {
                "Host": f"127.0.0.1:{plain.port}",
                "Proxy-Authorization": basic(t),
                "Content-Type": "application/octet-stream",
            },
            body=b"x" * 5000,
        )
    assert r.status == 413
    _err(r.status, r.headers, r.json(), "body_too_large")
    assert r.json()["limit_bytes"] == 1000
    assert plain.requests_seen.snapshot() == []
    with httpx.Client(proxy=strict.proxy_url(t), trust_env=False) as c:  # and a body under the limit passes
        assert c.post(f"http://127.0.0.1:{plain.port}/echo", content=b"y" * 900).json()["body_length"] == 900


def test_chunked_body_over_the_limit_is_cut(strict: ServerProc, plain: PlainUpstream) -> None:
    """No Content-Length to check up front: the body is counted as it streams and the request is
    cut when it crosses --max-request-bytes; the upstream never gets a complete request."""
    t = _agent(strict, "chunked-bot")
    target = f"http://127.0.0.1:{plain.port}/echo"
    head = {"Host": f"127.0.0.1:{plain.port}", "Proxy-Authorization": basic(t)}
    plain.requests_seen.clear()
    with RawConn(strict.proxy_port) as conn:
        r = conn.request("POST", target, head, body=b"z" * 5000, chunk=700)
    assert r.status == 413
    _err(r.status, r.headers, r.json(), "body_too_large")
    assert plain.requests_seen.snapshot() == []
    rec = wait_audit(strict.home, actor="agent:chunked-bot", error="body_too_large")
    assert rec["status"] == 413 and rec["decision"] == "denied"
    with RawConn(strict.proxy_port) as conn:  # a chunked body under the limit passes, whole
        ok = conn.request("POST", target, head, body=b"y" * 900, chunk=256)
    assert ok.status == 200 and ok.json()["body_length"] == 900


def test_refusals_do_not_wait_for_the_body(strict: ServerProc, plain: PlainUpstream) -> None:
    """A refused request is answered at once: its (here never sent) body is not read first."""
    t = _agent(strict, "huge-body-bot")
    target = f"http://127.0.0.1:{plain.port}/echo"
    plain.requests_seen.clear()
    for auth in (basic(t), None):  # body_too_large, then proxy_auth_required
        head = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{plain.port}", "Content-Length: 10000000"]
        head += [f"Proxy-Authorization: {auth}"] if auth else []
        with RawConn(strict.proxy_port, timeout=5) as conn:
            conn.send(("\r\n".join(head) + "\r\n\r\n").encode())
            status = conn.f.readline()
        assert status.split()[1] == (b"413" if auth else b"407")
    assert plain.requests_seen.snapshot() == []


def test_no_secret_or_token_in_server_logs(guarded: ServerProc, strict: ServerProc) -> None:
    for s in (guarded, strict):
        log = s.stderr_text()
        for value in (SECRET, *TOKENS, s.owner_token, OWNER_PASSWORD):
            assert value not in log
