"""Auth types, placeholder substitution, response redaction and Set-Cookie handling (SPEC §5.5, §5.6,
§5.9), through the real server with httpx and curl. One service per path prefix on localhost:<port>.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import trustme
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream

VALUES = {
    "BEARER_KEY": "bearer-secret-value-0001",
    "USER_KEY": "user-secret-name-0002",
    "PASS_KEY": "pass-secret-value-0003",
    "APIKEY": "apikey+secret/value=04",
    "SUBST_KEY": "subst Value+/&=x05",
    "BODY_KEY": 'body"secret\\value-06',
    "OTHER_KEY": "other-secret-value-0007",
}
TOKENS: list[str] = []
B = {"type": "bearer", "token": "BEARER_KEY"}


def _services(port: int) -> list[dict[str, Any]]:
    def svc(name: str, path: str, auth: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return {"name": name, "host": "localhost", "port": port, "path": path, "auth": auth, **kw}

    return [
        svc("bearer-api", "/echo/bearer", B),
        svc("basic-api", "/echo/basic", {"type": "basic", "username": "USER_KEY", "password": "PASS_KEY"}),
        svc(
            "basic-literal",
            "/echo/basiclit",
            {"type": "basic", "username_literal": "api", "password": "PASS_KEY"},
        ),
        svc(
            "key-header",
            "/echo/apikey",
            {"type": "api-key", "key": "APIKEY", "header": "X-Api-Key", "prefix": "Token "},
        ),
        svc("key-query", "/echo/apiquery", {"type": "api-key", "key": "APIKEY", "query": "api_key"}),
        svc(
            "custom-api",
            "/echo/custom",
            {
                "type": "custom",
                "headers": {"X-Custom": "id={{ USER_KEY }};sig={{PASS_KEY}}"},
                "query": {"sig": "{{PASS_KEY}}"},
            },
        ),
        svc("open-api", "/echo/pass", {"type": "passthrough"}),
        svc(
            "subst-api",
            "/echo/subst",
            B,
            substitutions={
                "keys": ["BEARER_KEY", "SUBST_KEY", "BODY_KEY"],
                "in": ["header", "path", "query", "body"],
            },
        ),
        svc("reflect-api", "/reflect", B),
        svc("cookie-api", "/set-cookie", B),
        svc("status-api", "/status", B),
        {"name": "cookie-open", "host": "upstream.test", "port": port, "auth": {"type": "passthrough"}},
    ]


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, up: TLSUpstream
) -> Iterator[ServerProc]:
    env = {"AGENT_VAULT_RESOLVE": "upstream.test=127.0.0.1,other.upstream.test=127.0.0.1"}
    with ServerProc(tmp_path_factory.mktemp("inject"), upstream_ca, env=env) as s:
        for key, value in VALUES.items():
            s.set_credential(key, value)
        for service in _services(up.port):
            s.add_service(service)
        yield s


@pytest.fixture(scope="module")
def token(srv: ServerProc) -> str:
    t = srv.make_agent("inject-bot")
    TOKENS.append(t)
    return t


@pytest.fixture
def client(srv: ServerProc, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=15
    ) as c:
        yield c


def _last(up: TLSUpstream) -> dict[str, Any]:
    req = up.requests_seen.wait_for(1)[-1]
    up.requests_seen.clear()
    return req


def _headers(req: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in req["headers"] if k.lower() == name]


def _no_secret(text: str) -> None:
    for v in VALUES.values():
        assert v not in text and quote(v, safe="") not in text


# ---- auth types ---------------------------------------------------------------------------------


def test_bearer_replaces_the_clients_header(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/echo/bearer", headers={"authorization": "Bearer fake"})
    assert _headers(_last(up), "authorization") == [f"Bearer {VALUES['BEARER_KEY']}"]
    assert r.json()["headers"]["authorization"] == "Bearer [REDACTED:BEARER_KEY]"
    _no_secret(r.text)


def test_basic_with_username_key(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/echo/basic/x")
    pair = base64.b64encode(f"{VALUES['USER_KEY']}:{VALUES['PASS_KEY']}".encode()).decode()
    assert _headers(_last(up), "authorization") == [f"Basic {pair}"]
    assert r.json()["headers"]["authorization"] == "Basic [REDACTED:PASS_KEY]"


def test_basic_with_literal_username(client: httpx.Client, up: TLSUpstream) -> None:
    client.get(f"https://localhost:{up.port}/echo/basiclit")
    pair = base64.b64encode(f"api:{VALUES['PASS_KEY']}".encode()).decode()
    assert _headers(_last(up), "authorization") == [f"Basic {pair}"]


def test_api_key_header_with_prefix_replaces_client_header(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(
        f"https://localhost:{up.port}/echo/apikey",
        headers={"x-API-key": "mine", "Authorization": "Bearer keep-me"},
    )
    req = _last(up)
    assert _headers(req, "x-api-key") == [f"Token {VALUES['APIKEY']}"]
    assert _headers(req, "authorization") == ["Bearer keep-me"]  # a different header: untouched
    _no_secret(r.text)


def test_api_key_query_param_replaces_existing(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/echo/apiquery?api_key=fake&other=1")
    params = parse_qs(urlsplit(_last(up)["path"]).query)
    assert params == {"api_key": [VALUES["APIKEY"]], "other": ["1"]}
    _no_secret(r.text)
    assert "[REDACTED:APIKEY]" in r.json()["query"]


def test_custom_header_and_query_templates(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/echo/custom")
    req = _last(up)
    assert _headers(req, "x-custom") == [f"id={VALUES['USER_KEY']};sig={VALUES['PASS_KEY']}"]
    assert parse_qs(urlsplit(req["path"]).query) == {"sig": [VALUES["PASS_KEY"]]}
    _no_secret(r.text)


def test_passthrough_injects_nothing(client: httpx.Client, up: TLSUpstream) -> None:
    client.get(f"https://localhost:{up.port}/echo/pass", headers={"Authorization": "Bearer agent-own"})
    req = _last(up)
    assert _headers(req, "authorization") == ["Bearer agent-own"]
    assert not [k for k, _ in req["headers"] if k.lower().startswith("x-api")]


# ---- placeholders -------------------------------------------------------------------------------


def test_placeholders_in_header_path_and_query(client: httpx.Client, up: TLSUpstream) -> None:
    sub = VALUES["SUBST_KEY"]
    r = client.get(
        f"https://localhost:{up.port}/echo/subst/{{{{SUBST_KEY}}}}?q=%7B%7B%20SUBST_KEY%20%7D%7D",
        headers={"X-Sub": "v={{ SUBST_KEY }}"},
    )
    req = _last(up)
    assert _headers(req, "x-sub") == [f"v={sub}"]
    path, _, query = req["path"].partition("?")
    assert path == f"/echo/subst/{quote(sub, safe='')}"
    params = parse_qs(query)
    assert params["q"] == [sub]
    _no_secret(r.text)
    # a placeholder of a key this service does not use is refused (issue #20: exfiltration blocking)
    other = client.get(f"https://localhost:{up.port}/echo/subst/x", headers={"X-Other": "{{OTHER_KEY}}"})
    assert other.status_code == 403 and other.json()["error"] == "exfiltration_blocked"
    other = client.get(f"https://localhost:{up.port}/echo/subst/x?o={{{{PASS_KEY}}}}")
    assert other.status_code == 403 and other.json()["key"] == "PASS_KEY"


def test_placeholders_to_other_services_and_unmatched_hosts_are_refused(
    srv: ServerProc, client: httpx.Client, up: TLSUpstream
) -> None:
    """Issue #20: a placeholder headed to a host that is not a service using its key is refused
    (403 exfiltration_blocked), never substituted nor sent literally."""
    up.requests_seen.clear()
    r = client.get(
        f"https://localhost:{up.port}/echo/bearer/{{{{SUBST_KEY}}}}", headers={"X-A": "{{SUBST_KEY}}"}
    )
    assert (
        r.status_code == 403
        and r.json()["error"] == "exfiltration_blocked"
        and r.json()["key"] == "SUBST_KEY"
    )
    with srv.http() as c:
        c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "passthrough"})
    try:
        r = client.get(f"https://other.upstream.test:{up.port}/echo/x", headers={"X-A": "{{BEARER_KEY}}"})
        assert r.status_code == 403 and r.json()["key"] == "BEARER_KEY"
        assert up.requests_seen.snapshot() == []
    finally:
        with srv.http() as c:
            c.patch("/v1/vaults/default", json={"password": OWNER_PASSWORD, "unmatched_policy": "tunnel"})


def test_body_substitution_is_opt_in_and_json_escaped(client: httpx.Client, up: TLSUpstream) -> None:
    payload = {"a": "{{BODY_KEY}}", "b": "x {{ SUBST_KEY }} y", "c": "{{NOT_A_KEY}}"}
    r = client.post(f"https://localhost:{up.port}/echo/subst/body", json=payload)
    got = json.loads(_last(up)["body"])
    assert got == {"a": VALUES["BODY_KEY"], "b": f"x {VALUES['SUBST_KEY']} y", "c": "{{NOT_A_KEY}}"}
    _no_secret(r.text)
    other = client.post(f"https://localhost:{up.port}/echo/subst/body", json={"c": "{{OTHER_KEY}}"})
    assert other.status_code == 403 and other.json()["error"] == "exfiltration_blocked"  # issue #20
    client.post(f"https://localhost:{up.port}/echo/bearer", json={"a": "{{BEARER_KEY}}"})  # not opted in
    assert json.loads(_last(up)["body"]) == {"a": "{{BEARER_KEY}}"}


# ---- redaction and cookies ----------------------------------------------------------------------


def test_redaction_of_echoed_header_and_body(client: httpx.Client, up: TLSUpstream) -> None:
    r = client.get(f"https://localhost:{up.port}/reflect?header=authorization")
    assert r.text == "Bearer [REDACTED:BEARER_KEY]"
    assert r.headers["x-reflected"] == "Bearer [REDACTED:BEARER_KEY]"


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_redaction_across_chunk_boundaries(client: httpx.Client, up: TLSUpstream, chunk: int) -> None:
    r = client.get(f"https://localhost:{up.port}/reflect?header=authorization&chunk={chunk}&delay=0.005")
    assert r.status_code == 200
    assert r.text == "Bearer [REDACTED:BEARER_KEY]"


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_gzip_responses_are_decoded_and_redacted(
    client: httpx.Client, up: TLSUpstream, streamed: bool
) -> None:
    extra = "&chunk=4&delay=0.005" if streamed else ""
    r = client.get(f"https://localhost:{up.port}/reflect?header=authorization&gzip=1{extra}")
    assert "content-encoding" not in r.headers
    assert r.content == b"Bearer [REDACTED:BEARER_KEY]"
    assert _headers(_last(up), "accept-encoding") == ["identity"]  # asked for a scannable body


def test_gzip_through_curl_compressed(srv: ServerProc, up: TLSUpstream, token: str) -> None:
    cp = subprocess.run(
        [
            "/usr/bin/curl",
            "-sS",
            "--compressed",
            "-x",
            srv.proxy,
            "--proxy-user",
            f"{token}:default",
            "--cacert",
            str(srv.ca_bundle),
            f"https://localhost:{up.port}/reflect?header=authorization&gzip=1",
        ],
        capture_output=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    assert cp.stdout == b"Bearer [REDACTED:BEARER_KEY]", cp.stderr


def test_bodyless_responses_keep_the_connection_usable(client: httpx.Client, up: TLSUpstream) -> None:
    """HEAD, 204 and 304 answers must not get a chunked body added (redaction is active here)."""
    assert client.head(f"https://localhost:{up.port}/echo/bearer").status_code == 200
    assert client.get(f"https://localhost:{up.port}/status/204").status_code == 204
    assert client.get(f"https://localhost:{up.port}/status/304").status_code == 304
    assert client.get(f"https://localhost:{up.port}/echo/bearer").status_code == 200  # same connection
    up.requests_seen.clear()


def test_set_cookie_stripped_for_injecting_and_kept_for_passthrough(
    client: httpx.Client, up: TLSUpstream
) -> None:
    r = client.get(f"https://localhost:{up.port}/set-cookie")
    assert r.status_code == 200 and "set-cookie" not in r.headers
    r = client.get(f"https://upstream.test:{up.port}/set-cookie")
    assert r.headers["set-cookie"] == "session=abc"


def test_no_secret_or_token_in_server_log(srv: ServerProc) -> None:
    log = srv.stderr_text()
    for value in (*VALUES.values(), *TOKENS, srv.owner_token, OWNER_PASSWORD):
        assert value not in log
