"""Proxy-Authorization parsing (SPEC §5.2)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_vault.proxy.auth import (
    MalformedProxyAuth,
    ProxyCredentials,
    parse_proxy_authorization,
    token_digest,
    token_kind,
)

TOKEN = "av_agt_" + "A" * 43


def basic(userpass: str) -> str:
    return "Basic " + base64.b64encode(userpass.encode()).decode()


def test_absent_header_is_not_an_error() -> None:
    assert parse_proxy_authorization(None) is None
    assert parse_proxy_authorization("") is None
    assert parse_proxy_authorization("   ") is None


def test_basic_with_vault_hint() -> None:
    assert parse_proxy_authorization(basic(f"{TOKEN}:team-a")) == ProxyCredentials(TOKEN, "team-a")


def test_basic_without_vault_or_with_empty_vault() -> None:
    assert parse_proxy_authorization(basic(TOKEN)) == ProxyCredentials(TOKEN, None)
    assert parse_proxy_authorization(basic(f"{TOKEN}:")) == ProxyCredentials(TOKEN, None)


def test_basic_splits_at_first_colon_and_url_decodes() -> None:
    # A client that percent-encodes the userinfo of HTTPS_PROXY=http://tok:vault@host.
    creds = parse_proxy_authorization(basic("av_agt_a%2Db:my%2Dvault:x"))
    assert creds == ProxyCredentials("av_agt_a-b", "my-vault:x")


def test_bearer_and_scheme_case() -> None:
    assert parse_proxy_authorization(f"Bearer {TOKEN}") == ProxyCredentials(TOKEN, None)
    assert parse_proxy_authorization(f"bEaReR   {TOKEN} ") == ProxyCredentials(TOKEN, None)
    assert parse_proxy_authorization(basic(TOKEN).replace("Basic", "BASIC")) == ProxyCredentials(TOKEN, None)


@pytest.mark.parametrize(
    "value",
    [
        "Digest username=x",
        "Basic",
        "Bearer",
        "Basic !!!notbase64!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:vault").decode(),
        "Basic " + base64.b64encode(b":vault").decode(),
        "Basic " + base64.b64encode(b"tok\x00en:vault").decode(),
        "Basic " + base64.b64encode(b"tok%0Aen:vault").decode(),
        "Basic " + base64.b64encode(b"token:va\nlt").decode(),
        "Basic " + base64.b64encode(b"tok%FFen").decode(),
        "Bearer tok en",
        "Bearer tok\x7fen",
        "Bearer tök",
        "Bearer " + "a" * 5000,
        "Basic dG9r\udcff",
    ],
)
def test_malformed_values_raise(value: str) -> None:
    with pytest.raises(MalformedProxyAuth):
        parse_proxy_authorization(value)


def test_repr_hides_the_token() -> None:
    creds = parse_proxy_authorization(basic(f"{TOKEN}:team-a"))
    assert TOKEN not in repr(creds) and "team-a" in repr(creds)


def test_malformed_message_never_echoes_the_value() -> None:
    secretish = "av_agt_SECRETSECRETSECRET"
    for value in (f"Bearer {secretish} extra", f"Token {secretish}", "Basic " + secretish + "!"):
        with pytest.raises(MalformedProxyAuth) as exc:
            parse_proxy_authorization(value)
        assert "SECRETSECRET" not in str(exc.value)
        assert "SECRETSECRET" not in repr(exc.value)


header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.text(max_size=20).map(
    lambda s: "Basic " + base64.b64encode(s.encode("utf-8", "surrogatepass")).decode()
)


_FIXED_WORDS = (
    "Proxy-Authorization is longer than 4096 characters must be 'Basic <base64>' or 'Bearer <token>' "
    "scheme must be Basic or Bearer credentials are not valid base64 UTF-8 percent-encoding is empty"
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["", "Basic ", "Bearer ", "basic ", "Negotiate "]), header_text)
@example("Basic ", "dG9rZW4=")
def test_fuzz_only_malformed_and_never_echoes(scheme: str, rest: str) -> None:
    value = scheme + rest
    try:
        creds = parse_proxy_authorization(value)
    except MalformedProxyAuth as exc:
        message = str(exc)
        assert message.startswith("Proxy-Authorization ")
        # the message never quotes the input: it is one of the fixed sentences (an input that happens
        # to be a word of those sentences, like "scheme", proves nothing either way)
        if len(rest.strip()) >= 6 and rest.strip() not in _FIXED_WORDS:
            assert rest.strip() not in message
        return
    if creds is not None:
        assert creds.token and all(0x21 <= ord(c) <= 0x7E for c in creds.token)
        assert creds.vault_hint is None or creds.vault_hint
        token_digest(creds.token)  # never fails on an accepted token


def test_digest_and_kinds() -> None:
    assert token_digest(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert len(token_digest("x")) == 64 and token_digest("x") == token_digest("x").lower()
    assert token_kind("av_usr_x") == "user"
    assert token_kind("av_agt_x") == "agent"
    assert token_kind("av_sess_x") == "session"
    assert token_kind("av_appr_x") == "approval"
    assert token_kind("av_inv_x") == "invite"
    assert token_kind("AV_AGT_x") is None  # case-sensitive
    assert token_kind("sk-live") is None
