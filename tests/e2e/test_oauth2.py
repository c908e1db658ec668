"""OAuth2 brokered auth (issue #16) through the real server: a local HTTPS token endpoint
(`helpers.oauth.TokenServer`) issues access tokens for the three grants, the proxy injects them into
requests to a local HTTPS API upstream, caches them, refreshes them ahead of `expires_in`, shares one
fetch among concurrent requests and never forwards a request when the endpoint fails.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme
from helpers.cli_fixtures import start_server
from helpers.oauth import TokenServer
from helpers.proxy import audit_records
from helpers.server import ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until

CLIENT_ID = "client-id-value-0001"
CLIENT_SECRET = "client-secret-value-0002"
REFRESH = "refresh-token-value-0003"
SUBJECT = "subject-token-value-0004"
CURL = "/usr/bin/curl"


@pytest.fixture(scope="module")
def api(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca) as u:
        yield u


@pytest.fixture(scope="module")
def idp(upstream_ca: trustme.CA) -> Iterator[TokenServer]:
    with TokenServer(
        ca=upstream_ca,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH,
        subject_token=SUBJECT,
        rotate=True,
    ) as t:
        yield t


def _svc(name: str, port: int, path: str, auth: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "host": "localhost", "port": port, "path": path, "auth": auth}


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA, api: TLSUpstream, idp: TokenServer
) -> Iterator[ServerProc]:
    for s in start_server(tmp_path_factory.mktemp("oauth2"), upstream_ca):
        for key, value in {
            "OAUTH_CLIENT_ID": CLIENT_ID,
            "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
            "OAUTH_REFRESH": REFRESH,
            "OAUTH_SUBJECT": SUBJECT,
        }.items():
            s.set_credential(key, value)
        token_url = f"https://localhost:{idp.port}/token"
        common = {
            "token_url": token_url,
            "client_id": "OAUTH_CLIENT_ID",
            "client_secret": "OAUTH_CLIENT_SECRET",
        }
        p = api.port
        s.add_service(
            _svc("cc-api", p, "/echo/cc", {"type": "oauth2-client-credentials", **common, "scopes": ["read"]})
        )
        s.add_service(
            _svc(
                "cc-post",
                p,
                "/echo/post",
                {"type": "oauth2-client-credentials", **common, "token_auth": "post", "audience": "api"},
            )
        )
        s.add_service(
            _svc(
                "rt-api",
                p,
                "/echo/rt",
                {"type": "oauth2-refresh-token", **common, "refresh_token": "OAUTH_REFRESH"},
            )
        )
        s.add_service(
            _svc(
                "te-api",
                p,
                "/echo/te",
                {"type": "token-exchange", **common, "subject_token": "OAUTH_SUBJECT"},
            )
        )
        s.add_service(_svc("bad-api", p, "/echo/bad", {"type": "oauth2-client-credentials", **common}))
        yield s


@pytest.fixture(scope="module")
def agent(srv: ServerProc) -> str:
    return srv.make_agent("oauth-bot")


def _client(srv: ServerProc, token: str) -> httpx.Client:
    return httpx.Client(proxy=srv.proxy_url(token), verify=str(srv.ca_bundle), trust_env=False, timeout=20)


def _auth_seen(api: TLSUpstream, path: str) -> list[str]:
    out = []
    for r in api.requests_seen.snapshot():
        if r["path"].startswith(path):
            out += [v for k, v in r["headers"] if k.lower() == "authorization"]
    return out


def test_client_credentials_token_is_injected_cached_and_redacted(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    before = len(idp.issued)
    with _client(srv, agent) as c:
        r1 = c.get(f"https://localhost:{api.port}/echo/cc/1", headers={"Authorization": "Bearer fake"})
        r2 = c.get(f"https://localhost:{api.port}/echo/cc/2")
    assert r1.status_code == r2.status_code == 200
    assert len(idp.issued) == before + 1  # the second request used the cached token
    token = idp.issued[-1]
    assert _auth_seen(api, "/echo/cc") == [f"Bearer {token}"] * 2
    assert r1.json()["headers"]["authorization"] == "Bearer [REDACTED:cc-api:access_token]"
    assert token not in r1.text and CLIENT_SECRET not in r1.text
    grant = idp.grants[-1]
    assert grant["grant_type"] == "client_credentials" and grant["scope"] == "read"
    assert "client_secret" not in grant  # HTTP Basic by default
    rec = wait_until(lambda: audit_records(srv.home, service="cc-api"), "cc-api audit", timeout=5)
    text = json.dumps(rec)
    assert token not in text and CLIENT_SECRET not in text
    assert rec[-1]["injected_keys"] == ["OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET"]


def test_client_secret_in_the_form_and_audience(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    with _client(srv, agent) as c:
        assert c.get(f"https://localhost:{api.port}/echo/post").status_code == 200
    grant = idp.grants[-1]
    assert grant["client_secret"] == CLIENT_SECRET and grant["audience"] == "api"
    assert _auth_seen(api, "/echo/post") == [f"Bearer {idp.issued[-1]}"]


def test_refresh_token_rotation_is_stored_back_sealed(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    with _client(srv, agent) as c:
        assert c.get(f"https://localhost:{api.port}/echo/rt").status_code == 200
    assert idp.refresh_tokens_seen[-1] == REFRESH
    rotated = idp.refresh_token
    assert rotated != REFRESH
    with srv.http() as h:  # the vault now holds the rotated refresh token (reveal: admin + step-up)
        r = h.post(
            "/v1/vaults/default/credentials/OAUTH_REFRESH/reveal", json={"password": "owner-password-123"}
        )
    assert r.status_code == 200 and r.json()["value"] == rotated
    assert rotated.encode() not in (srv.home / "agent-vault.db").read_bytes()  # sealed, not plain
    rec = wait_until(
        lambda: audit_records(srv.home, kind="credential.rotate", target="OAUTH_REFRESH"), "rotate audit"
    )
    assert rec[-1]["actor"] == "service:rt-api" and rotated not in json.dumps(rec)


def test_token_exchange(srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer) -> None:
    with _client(srv, agent) as c:
        assert c.get(f"https://localhost:{api.port}/echo/te").status_code == 200
    grant = idp.grants[-1]
    assert grant["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert grant["subject_token"] == SUBJECT
    assert grant["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert _auth_seen(api, "/echo/te") == [f"Bearer {idp.issued[-1]}"]


def test_failing_endpoint_gives_502_and_the_upstream_is_never_hit(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    idp.fail_with = "invalid_client"
    try:
        with _client(srv, agent) as c:
            r = c.get(f"https://localhost:{api.port}/echo/bad/x")
    finally:
        idp.fail_with = None
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "credential_unavailable"
    assert "bad-api" in body["hint"] and "invalid_client" in body["hint"]
    assert r.headers["x-agent-vault-proxy-error"] == "true"
    assert not [x for x in api.requests_seen.snapshot() if x["path"].startswith("/echo/bad")]


def test_expired_tokens_are_refreshed(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    """A 2-second token: the next request after expiry uses a new one; rotating the client secret
    (a new value) makes the next request fetch anew too."""
    idp.expires_in = 2
    try:
        srv.add_service(
            _svc(
                "short-api",
                api.port,
                "/echo/short",
                {
                    "type": "oauth2-client-credentials",
                    "token_url": f"https://localhost:{idp.port}/token",
                    "client_id": "OAUTH_CLIENT_ID",
                    "client_secret": "OAUTH_CLIENT_SECRET",
                    "scopes": ["short"],
                },
            )
        )
        with _client(srv, agent) as c:
            c.get(f"https://localhost:{api.port}/echo/short/1")
            first = idp.issued[-1]
            time.sleep(2.2)
            c.get(f"https://localhost:{api.port}/echo/short/2")
            second = idp.issued[-1]
        assert first != second
        assert _auth_seen(api, "/echo/short") == [f"Bearer {first}", f"Bearer {second}"]
    finally:
        idp.expires_in = 3600


def test_forty_concurrent_cold_requests_cause_one_token_request(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    srv.add_service(
        _svc(
            "burst-api",
            api.port,
            "/echo/burst",
            {
                "type": "oauth2-client-credentials",
                "token_url": f"https://localhost:{idp.port}/token",
                "client_id": "OAUTH_CLIENT_ID",
                "client_secret": "OAUTH_CLIENT_SECRET",
                "scopes": ["burst"],
            },
        )
    )
    idp.delay = 0.5  # the fetch is still in flight while all 40 arrive
    before = len([g for g in idp.grants if g.get("scope") == "burst"])
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with _client(srv, agent) as c:
            s = c.get(f"https://localhost:{api.port}/echo/burst/{i}").status_code
        with lock:
            statuses.append(s)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        idp.delay = 0.0
    assert statuses == [200] * 40
    assert len([g for g in idp.grants if g.get("scope") == "burst"]) == before + 1
    assert len(set(_auth_seen(api, "/echo/burst"))) == 1


def test_curl_under_vault_run(srv: ServerProc, api: TLSUpstream, idp: TokenServer) -> None:
    cp = srv.cli("vault", "run", "--", CURL, "-sS", f"https://localhost:{api.port}/echo/cc/curl")
    assert json.loads(cp.stdout)["headers"]["authorization"] == "Bearer [REDACTED:cc-api:access_token]"
    for t in idp.issued:
        assert t not in cp.stdout + cp.stderr
    assert "Traceback" not in srv.stderr_text()
    for t in idp.issued:
        assert t not in srv.stderr_text()


def test_cli_flags_add_the_new_auth_types(srv: ServerProc, api: TLSUpstream, idp: TokenServer) -> None:
    pw = "owner-password-123\n"
    common = ["--host", "localhost", "--port", str(api.port), "--password-stdin"]
    oauth = ["--token-url", f"https://localhost:{idp.port}/token", "--client-id-key", "OAUTH_CLIENT_ID"]
    cp = srv.cli(
        "vault", "service", "add", "cli-cc", *common, "--path", "/echo/clicc", "--auth-type",
        "OAuth2-Client-Credentials", *oauth, "--client-secret-key", "OAUTH_CLIENT_SECRET", "--scope", "a",
        "--scope", "b", "--token-auth", "post", "--json", input=pw,
    )  # fmt: skip
    auth = json.loads(cp.stdout)["auth"]
    assert auth["type"] == "oauth2-client-credentials" and auth["scopes"] == ["a", "b"]
    assert auth["token_auth"] == "post" and auth["client_secret"] == "OAUTH_CLIENT_SECRET"
    missing = srv.cli(
        "vault", "service", "add", "cli-rt", *common, "--auth-type", "oauth2-refresh-token", *oauth,
        "--client-secret-key", "OAUTH_CLIENT_SECRET", input=pw, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "needs --refresh-token-key" in missing.stderr
    assert "Traceback" not in missing.stderr
    cp = srv.cli(
        "vault", "service", "add", "cli-aws", *common, "--path", "/aws", "--auth-type", "aws-sigv4",
        "--aws-access-key-id-key", "NEW_AWS_ID", "--aws-secret-access-key-key", "NEW_AWS_SECRET",
        "--aws-region", "eu-west-1", "--aws-service", "s3", "--aws-role-arn",
        "arn:aws:iam::123456789012:role/x", "--aws-sts-endpoint", "https://sts.example.com/", input=pw,
    )  # fmt: skip
    assert "NEW_AWS_ID, NEW_AWS_SECRET have no value yet" in cp.stdout
    bad = srv.cli(
        "vault", "service", "add", "cli-aws2", *common, "--auth-type", "aws-sigv4",
        "--aws-access-key-id-key", "A", "--aws-secret-access-key-key", "B", "--aws-region", "moon",
        "--aws-service", "s3", input=pw, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "region must be an AWS region name" in bad.stderr


def test_agents_discover_and_propose_the_new_auth_types(
    srv: ServerProc, agent: str, api: TLSUpstream, idp: TokenServer
) -> None:
    with srv.http(agent) as a:
        d = a.get("/v1/discover").json()
        assert {"oauth2-client-credentials", "oauth2-refresh-token", "token-exchange", "aws-sigv4"} <= set(
            d["supported_auth_types"]
        )
        cc = next(s for s in d["services"] if s["name"] == "cc-api")
        assert cc["auth_type"] == "oauth2-client-credentials" and cc["placeholders"] == []
        auth = {
            "type": "token-exchange",
            "token_url": f"https://localhost:{idp.port}/token",
            "client_id": "OAUTH_CLIENT_ID",
            "client_secret": "NEW_CLIENT_SECRET",
            "subject_token": "OAUTH_SUBJECT",
            "audience": "https://api.example.com",
        }
        svc = {"action": "set", "name": "proposed-te", "host": "localhost", "port": api.port, "auth": auth}
        cred = {"action": "set", "key": "NEW_CLIENT_SECRET", "description": "client secret"}
        r = a.post("/v1/proposals", json={"services": [svc], "credentials": [cred], "message": "need it"})
        assert r.status_code == 201, r.text
        bad = {**svc, "auth": {k: v for k, v in auth.items() if k != "token_url"}}
        r = a.post("/v1/proposals", json={"services": [bad], "message": "need it"})
        assert r.status_code in (400, 422) and "token_url" in r.text
        insecure = {**svc, "auth": {**auth, "token_url": "http://localhost/token"}}
        r = a.post("/v1/proposals", json={"services": [insecure], "message": "need it"})
        assert r.status_code in (400, 422) and "https://" in r.text


def test_httpx_under_vault_run(srv: ServerProc, api: TLSUpstream, idp: TokenServer) -> None:
    script = (
        "import httpx, sys; r = httpx.get(sys.argv[1], headers={'Authorization': 'Bearer placeholder'}); "
        "print(r.status_code, r.json()['headers']['authorization'])"
    )
    url = f"https://localhost:{api.port}/echo/te/httpx"
    cp = srv.cli("vault", "run", "--quiet", "--", sys.executable, "-c", script, url)
    assert cp.stdout.strip() == "200 Bearer [REDACTED:te-api:access_token]"
    (seen,) = _auth_seen(api, "/echo/te/httpx")
    assert seen.removeprefix("Bearer ") in idp.issued
    assert seen.removeprefix("Bearer ") not in cp.stdout + cp.stderr
