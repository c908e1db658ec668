"""Pure parts of the brokered auth types (issue #16): service validation, the single-flight token cache,
token-endpoint answers, STS answers and SigV4 signing (checked by the test verifier, which recomputes
the signature with botocore's stock signer)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from helpers.sigv4 import verify
from helpers.upstream import UpstreamRequest
from pydantic import ValidationError

from agent_vault.errors import CredentialUnavailable
from agent_vault.proxy import aws
from agent_vault.proxy.oauth2 import _lifetime, parse_answer
from agent_vault.proxy.tokencache import TokenCache
from agent_vault.proxy.tokenfetch import Answer
from agent_vault.servicedef import ServiceDef

CC = {
    "type": "oauth2-client-credentials",
    "token_url": "https://idp.example.com/oauth/token",
    "client_id": "CID",
    "client_secret": "CSECRET",
}
SIG = {
    "type": "aws-sigv4",
    "access_key_id": "AKID",
    "secret_access_key": "ASECRET",
    "region": "eu-west-1",
    "service": "s3",
}


def _svc(auth: dict[str, Any]) -> ServiceDef:
    return ServiceDef.model_validate({"name": "svc-one", "host": "api.example.com", "auth": auth})


def test_brokered_services_validate_and_name_their_keys() -> None:
    s = _svc({**CC, "scopes": ["a", "b", "a"], "audience": "api"})
    assert s.auth.referenced_keys() == ["CID", "CSECRET"] and s.injects and s.sends_credentials
    assert s.substitution_keys == []  # client secrets are never agent placeholders by default
    rt = _svc({**CC, "type": "oauth2-refresh-token", "refresh_token": "RT"})
    assert rt.auth.referenced_keys() == ["CID", "CSECRET", "RT"]
    te = _svc({**CC, "type": "token-exchange", "subject_token": "SUBJ"})
    assert te.auth.referenced_keys() == ["CID", "CSECRET", "SUBJ"]
    a = _svc(
        {
            **SIG,
            "session_token": "ATOKEN",
            "role_arn": "arn:aws:iam::123456789012:role/r",
            "external_id": "EXT",
        }
    )
    assert a.auth.referenced_keys() == ["AKID", "ASECRET", "ATOKEN", "EXT"]
    assert ServiceDef.model_validate(s.model_dump(mode="json", by_alias=True)) == s


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        ({**CC, "token_url": "http://idp.example.com/token"}, "https://"),
        ({**CC, "token_url": "https://user:pw@idp.example.com/token"}, "user:password"),
        ({k: v for k, v in CC.items() if k != "client_secret"}, "client_secret"),
        ({**CC, "scopes": ["has space"]}, "scope"),
        ({**CC, "type": "oauth2-refresh-token"}, "refresh_token"),
        ({**CC, "client_id": "lower-case-value"}, "credential key"),
        ({**SIG, "region": "Moon"}, "region"),
        ({**SIG, "external_id": "EXT"}, "role_arn"),
        ({**SIG, "role_arn": "arn:aws:iam::1:role/x"}, "role_arn"),
        ({**SIG, "sts_endpoint": "https://sts.example.com"}, "role_arn"),
    ],
)
def test_invalid_brokered_services_are_refused_clearly(auth: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as info:
        _svc(auth)
    assert words in str(info.value)
    assert "lower-case-value" not in str(info.value)  # input hidden: it may be a pasted value


def test_token_cache_single_flight_refresh_ahead_and_failures() -> None:
    asyncio.run(_token_cache())


async def _token_cache() -> None:
    cache: TokenCache[str] = TokenCache()
    calls: list[int] = []
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        calls.append(1)
        await gate.wait()
        return f"tok-{len(calls)}", 100.0

    waiters = [asyncio.ensure_future(cache.get("k", fetch)) for _ in range(40)]
    await asyncio.sleep(0.01)
    gate.set()
    assert set(await asyncio.gather(*waiters)) == {"tok-1"} and len(calls) == 1
    entry = cache._entries["k"]
    assert entry.refresh_at < entry.expires_at
    entry.refresh_at = 0.0  # stale but valid: served at once, one background refresh
    assert await cache.get("k", fetch) == "tok-1"
    await asyncio.sleep(0.01)
    assert await cache.get("k", fetch) == "tok-2" and len(calls) == 2
    cache._entries["k"].expires_at = cache._entries["k"].refresh_at = 0.0  # expired: waits for a new one
    assert await cache.get("k", fetch) == "tok-3"

    async def failing() -> tuple[str, float]:
        raise CredentialUnavailable("no", service="s", endpoint="e", cause="c")

    for _ in range(2):  # failures are not cached: every request tries again
        with pytest.raises(CredentialUnavailable):
            await cache.get("bad", failing)
    assert cache.fetches == 5


def test_token_answers() -> None:
    ok = parse_answer(Answer(200, b'{"access_token": "abc.def", "expires_in": 60}'), "svc", "idp")
    assert ok["access_token"] == "abc.def"
    for body, status, cause in [
        (b'{"error": "invalid_client"}', 401, "invalid_client"),
        (b'{"error": "bad code\\r\\nX: y"}', 400, "http_400"),
        (b"<html>oops</html>", 500, "http_500"),
        (b'{"token_type": "bearer"}', 200, "invalid_access_token"),
        (b'{"access_token": "a b"}', 200, "invalid_access_token"),
        (b"[]", 200, "invalid_answer"),
    ]:
        with pytest.raises(CredentialUnavailable) as info:
            parse_answer(Answer(status, body), "svc", "idp")
        assert info.value.extra["cause"] == cause and "svc" in info.value.hint
    assert _lifetime(60) == 60 and _lifetime("30") == 30 and _lifetime(None) == 300
    assert _lifetime(-5) == 300 and _lifetime(10**9) == 86400 and _lifetime(True) == 300


STS_OK = b"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>
<Credentials><AccessKeyId>ASIATEMP</AccessKeyId><SecretAccessKey>temp-secret-000</SecretAccessKey>
<SessionToken>temp-token-000</SessionToken><Expiration>2999-01-01T00:00:00Z</Expiration></Credentials>
</AssumeRoleResult></AssumeRoleResponse>"""


def test_sts_answers() -> None:
    keys, lifetime = aws.parse_sts(STS_OK, "svc", "sts")
    assert keys.access_key == "ASIATEMP" and keys.token == "temp-token-000" and lifetime > 3600
    assert "temp-secret" not in repr(keys)
    err = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>m</Message></Error></ErrorResponse>"
    with pytest.raises(CredentialUnavailable) as info:
        aws.parse_sts(err, "svc", "sts")
    assert info.value.extra["cause"] == "AccessDenied"
    with pytest.raises(CredentialUnavailable):
        aws.parse_sts(b"<a", "svc", "sts")


@pytest.mark.parametrize(("service", "unsigned"), [("s3", False), ("s3", True), ("sqs", False)])
def test_signing_replaces_the_agents_signature(service: str, unsigned: bool) -> None:
    keys = aws.AwsKeys("AKIAREAL", "real-secret-key", "real-session")
    body = b'{"a": 1}'
    headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/20200101/us-east-1/s3/aws4_request, x",
        "X-Amz-Security-Token": "placeholder",
        "Content-Type": "application/json",
        "X-Amz-Target": "Svc.Op",
        "User-Agent": "agent",
    }
    digest = aws.UNSIGNED_PAYLOAD if unsigned else aws.payload_hash(body)
    url = "https://api.example.com/a%20b/c?z=1&a=2"
    names = aws.sign(headers, "POST", url, "api.example.com", digest, keys, service, "us-east-1")
    assert "Authorization" in names and headers["X-Amz-Security-Token"] == "real-session"
    assert "PLACEHOLDER" not in headers["Authorization"]
    req = UpstreamRequest(
        "POST", "/a%20b/c?z=1&a=2", list(headers.items()), body, "HTTP/1.1", "https", "api.example.com"
    )
    facts = verify(req, {"AKIAREAL": ("real-secret-key", "real-session")})
    assert isinstance(facts, dict) and facts["service"] == service, facts
    assert "user-agent" not in facts["signed_headers"] and "x-amz-target" in facts["signed_headers"]
    tampered = UpstreamRequest(
        "POST", "/a%20b/c?z=1&a=3", list(headers.items()), body, "HTTP/1.1", "https", "api.example.com"
    )
    assert verify(tampered, {"AKIAREAL": ("real-secret-key", "real-session")}) == "signature mismatch"
    if not unsigned:
        other = UpstreamRequest(
            "POST", "/a%20b/c?z=1&a=2", list(headers.items()), b"{}", "HTTP/1.1", "https", "api.example.com"
        )
        assert verify(other, {"AKIAREAL": ("real-secret-key", "real-session")}) != facts
    assert hashlib.sha256(body).hexdigest() == aws.payload_hash(body)


def test_token_fetch_pins_verifies_and_bounds(tmp_path: Any) -> None:
    """A real local HTTPS endpoint: trusted -> the answer; untrusted certificate -> tls_error; a
    loopback address without --allow-net -> ssrf_blocked; nothing listening -> unreachable."""
    import trustme
    from helpers.proxy import free_port
    from helpers.upstream import TLSUpstream

    from agent_vault.proxy.ssrf import Egress
    from agent_vault.proxy.tokenfetch import TokenFetch

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def run(fetch: TokenFetch, url: str) -> Answer | str:
        try:
            return await fetch.post(url, b"a=1", {}, service="svc")
        except CredentialUnavailable as e:
            return str(e.extra["cause"])
        finally:
            await fetch.aclose()

    with TLSUpstream(ca=ca) as up:
        url = f"https://localhost:{up.port}/echo/token"
        ok = asyncio.run(run(TokenFetch(Egress(["127.0.0.0/8", "::1/128"]), ca_file), url))
        assert isinstance(ok, Answer) and ok.status == 200 and b'"method": "POST"' in ok.body
        assert asyncio.run(run(TokenFetch(Egress(["127.0.0.0/8", "::1/128"]), None), url)) == "tls_error"
        assert asyncio.run(run(TokenFetch(Egress([]), ca_file), url)) == "ssrf_blocked"
        big = f"https://localhost:{up.port}/download?bytes={200_000}"
        assert (
            asyncio.run(run(TokenFetch(Egress(["127.0.0.0/8", "::1/128"]), ca_file), big))
            == "answer_too_large"
        )
    dead = f"https://127.0.0.1:{free_port()}/token"
    assert asyncio.run(run(TokenFetch(Egress(["127.0.0.0/8"]), ca_file), dead)) == "unreachable"


def test_botocore_loads_only_when_a_request_is_signed() -> None:
    """The server does not import botocore (~4 MiB of idle RSS) until an aws-sigv4 service signs."""
    import subprocess
    import sys

    code = (
        "import sys, agent_vault.server, agent_vault.proxy.aws as aws; "
        "assert 'botocore' not in sys.modules, 'imported at start'; "
        "import botocore.auth; assert aws.UNSIGNED_PAYLOAD == botocore.auth.UNSIGNED_PAYLOAD"
    )
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert cp.returncode == 0, cp.stderr[-2000:]
