"""Injection, substitution, header hygiene and redaction (SPEC §5.5-§5.9)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers

from agent_vault.errors import CredentialNotFound, SubstitutionError
from agent_vault.proxy.hygiene import strip_request_headers, strip_response_headers
from agent_vault.proxy.inject import (
    Injection,
    StreamRedactor,
    apply_injection,
    build_injection,
    redact_bytes,
    redact_text,
    substitute_body,
    substitute_request,
    substitute_text,
)
from agent_vault.servicedef import ApiKeyAuth, BasicAuth, BearerAuth, CustomAuth, PassthroughAuth

SECRET = "sk-live-0123456789abcdef"
VALUES = {"OPENAI_KEY": SECRET, "USER": "svc-account", "PASS": "p@ss:word/+ 99", "SHORT": "abc"}


# --- build_injection / apply_injection --------------------------------------------------------------


def test_bearer_replaces_client_authorization_not_duplicates() -> None:
    headers = Headers(authorization="Bearer dummy", AUTHORIZATION="Bearer dummy2", accept="*/*")
    inj = build_injection(BearerAuth(token="OPENAI_KEY"), VALUES)
    path = apply_injection(headers, "/v1/models", inj)
    assert path == "/v1/models"
    assert headers.get_all("Authorization") == [f"Bearer {SECRET}"]
    assert headers["accept"] == "*/*"
    assert inj.used_keys == ["OPENAI_KEY"]
    assert inj.secrets == [("OPENAI_KEY", SECRET.encode())]


def test_apply_injection_on_a_plain_dict_is_case_insensitive() -> None:
    headers = {"authorization": "x", "X-Other": "1"}
    apply_injection(headers, "/", build_injection(BearerAuth(token="OPENAI_KEY"), VALUES))
    assert headers == {"X-Other": "1", "Authorization": f"Bearer {SECRET}"}


def test_basic_auth_and_its_base64_is_a_secret() -> None:
    inj = build_injection(BasicAuth(username="USER", password="PASS"), VALUES)
    expected = base64.b64encode(b"svc-account:p@ss:word/+ 99").decode()
    assert inj.headers == {"Authorization": f"Basic {expected}"}
    assert ("PASS", expected.encode()) in inj.secrets
    assert ("USER", b"svc-account") in inj.secrets and ("PASS", VALUES["PASS"].encode()) in inj.secrets
    literal = build_injection(BasicAuth(username_literal="api"), VALUES)
    assert literal.headers == {"Authorization": "Basic " + base64.b64encode(b"api:").decode()}
    assert literal.secrets == [] and literal.used_keys == []
    with pytest.raises(SubstitutionError):
        build_injection(BasicAuth(username="USER"), {"USER": "a:b"})


def test_short_values_are_injected_but_not_redaction_targets() -> None:
    inj = build_injection(ApiKeyAuth(key="SHORT", header="X-Api-Key", prefix="Key "), VALUES)
    assert inj.headers == {"X-Api-Key": "Key abc"} and inj.secrets == []


def test_api_key_in_query_replaces_existing_and_encodes() -> None:
    inj = build_injection(ApiKeyAuth(key="PASS", query="api_key"), VALUES)
    headers = Headers()
    path = apply_injection(headers, "/search?q=a%20b&api_key=dummy&api%5Fkey=x&z", inj)
    assert path == "/search?q=a%20b&z&api_key=p%40ss%3Aword%2F%2B%2099"
    assert dict(parse_qsl(urlsplit(path).query))["api_key"] == VALUES["PASS"]
    assert not headers
    assert apply_injection(Headers(), "/x", inj) == "/x?api_key=p%40ss%3Aword%2F%2B%2099"


def test_custom_templates_render() -> None:
    auth = CustomAuth(headers={"X-Auth": "u={{ USER }};k={{OPENAI_KEY}}"}, query={"sig": "{{ PASS }}"})
    inj = build_injection(auth, VALUES)
    assert inj.headers == {"X-Auth": f"u=svc-account;k={SECRET}"}
    assert inj.query == {"sig": VALUES["PASS"]}
    assert inj.used_keys == ["USER", "OPENAI_KEY", "PASS"]


def test_passthrough_injects_nothing() -> None:
    inj = build_injection(PassthroughAuth(), VALUES)
    headers = Headers(authorization="Bearer mine")
    assert apply_injection(headers, "/p?q", inj) == "/p?q"
    assert headers["authorization"] == "Bearer mine"


def test_missing_and_unusable_values_name_the_key_only() -> None:
    with pytest.raises(CredentialNotFound) as nf:
        build_injection(BearerAuth(token="NOPE"), VALUES)
    assert nf.value.key == "NOPE"
    bad = "line1\r\nX-Injected: yes"
    for auth in (BearerAuth(token="K"), CustomAuth(headers={"X-A": "{{K}}"}), ApiKeyAuth(key="K", query="q")):
        with pytest.raises(SubstitutionError) as se:
            build_injection(auth, {"K": bad})
        assert "X-Injected" not in str(se.value) and se.value.key == "K"


def test_injection_repr_hides_values() -> None:
    inj = build_injection(CustomAuth(headers={"X-Auth": "{{OPENAI_KEY}}"}, query={"k": "{{PASS}}"}), VALUES)
    text = repr(inj)
    assert SECRET not in text and "p@ss" not in text
    assert "X-Auth" in text and "OPENAI_KEY" in text
    assert isinstance(inj, Injection)


# --- substitution -----------------------------------------------------------------------------------


def test_placeholder_for_non_allowed_key_is_forwarded_literally() -> None:
    text, used = substitute_text(
        "a {{OPENAI_KEY}} b {{ PASS }} c {{MISSING}}", VALUES, {"PASS"}, encoding="raw"
    )
    assert text == "a {{OPENAI_KEY}} b p@ss:word/+ 99 c {{MISSING}}"
    assert used == ["PASS"]


def test_url_mode_recognises_encoded_braces_and_encodes_value() -> None:
    text, used = substitute_text("/u/%7b%7BPASS%7D%7d/{{PASS}}", VALUES, {"PASS"}, encoding="url")
    assert text == "/u/p%40ss%3Aword%2F%2B%2099/p%40ss%3Aword%2F%2B%2099"
    assert used == ["PASS"]
    assert substitute_text("/u/%7B%7Bpass%7D%7D", VALUES, {"PASS"}, encoding="url")[1] == []


def test_substitute_request_surfaces() -> None:
    headers = Headers(
        [(b"X-Key", b"{{ OPENAI_KEY }}"), (b"X-Key", b"second {{OPENAI_KEY}}"), (b"X-N", b"{{PASS}}")]
    )
    allowed = {"OPENAI_KEY": SECRET}
    path, used = substitute_request(
        headers, "/bot{{OPENAI_KEY}}/x?k=%7B%7BOPENAI_KEY%7D%7D", allowed, ["header"]
    )
    assert headers.get_all("X-Key") == [SECRET, f"second {SECRET}"]
    assert headers["X-N"] == "{{PASS}}"  # not allowed for this service
    assert path == "/bot{{OPENAI_KEY}}/x?k=%7B%7BOPENAI_KEY%7D%7D"  # path/query surfaces off
    assert used == ["OPENAI_KEY"]
    path, used = substitute_request(
        Headers(), "/bot{{OPENAI_KEY}}/x?k=%7B%7BOPENAI_KEY%7D%7D", allowed, ["path"]
    )
    assert path == f"/bot{SECRET}/x?k=%7B%7BOPENAI_KEY%7D%7D"
    path, _ = substitute_request(Headers(), "/a?k=%7B%7BOPENAI_KEY%7D%7D", allowed, ["query"])
    assert path == f"/a?k={SECRET}"


def test_substitute_request_refuses_crlf_into_headers() -> None:
    with pytest.raises(SubstitutionError):
        substitute_request({"X-A": "{{K}}"}, "/", {"K": "a\nb"}, ["header"])
    path, _ = substitute_request({}, "/{{K}}", {"K": "a\nb"}, ["path"])
    assert path == "/a%0Ab"


def test_substitute_body_by_content_type() -> None:
    allowed = ["PASS"]
    body = b'{"password": "{{PASS}}", "other": "{{OPENAI_KEY}}"}'
    out, used = substitute_body(
        b'{"s": "{{PASS}}"}', "application/json; charset=utf-8", None, {"PASS": 'a"b\\c'}, allowed
    )
    assert json.loads(out) == {"s": 'a"b\\c'} and used == ["PASS"]
    out, _ = substitute_body(body, "application/vnd.api+json", None, VALUES, allowed)
    assert json.loads(out) == {"password": VALUES["PASS"], "other": "{{OPENAI_KEY}}"}
    out, _ = substitute_body(
        b"a=%7B%7BPASS%7D%7D&b={{PASS}}", "application/x-www-form-urlencoded", None, VALUES, allowed
    )
    assert out == b"a=p%40ss%3Aword%2F%2B+99&b=p%40ss%3Aword%2F%2B+99"
    out, _ = substitute_body(b"pw={{ PASS }}", "text/plain", None, VALUES, allowed)
    assert out == b"pw=p@ss:word/+ 99"
    out, _ = substitute_body(b"pw={{PASS}}", None, None, VALUES, allowed)
    assert out == b"pw=p@ss:word/+ 99"
    for ct, ce in (("multipart/form-data; boundary=x", None), ("application/json", "gzip")):
        assert substitute_body(b'{"a": "{{PASS}}"}', ct, ce, VALUES, allowed) == (b'{"a": "{{PASS}}"}', [])
    binary = b"\xff\xfe{{PASS}}"
    assert substitute_body(binary, "application/octet-stream", None, VALUES, allowed) == (binary, [])


# --- header hygiene ---------------------------------------------------------------------------------


def test_strip_request_headers() -> None:
    headers = Headers(
        [
            (b"Proxy-Authorization", b"Basic abc"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Vault", b"other"),
            (b"X-Agent-Vault-Debug", b"1"),
            (b"Connection", b"keep-alive, X-Secret-Hop, Content-Length"),
            (b"X-Secret-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"gzip"),
            (b"Trailer", b"X"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"10"),
            (b"Upgrade", b"h2c"),
            (b"X-Api-Key", b"client-supplied"),
            (b"Accept", b"*/*"),
        ]
    )
    strip_request_headers(headers, ["x-api-key"])
    assert dict(headers) == {"Transfer-Encoding": "chunked", "Content-Length": "10", "Accept": "*/*"}
    strip_request_headers(headers, [], keep_framing=False)
    assert dict(headers) == {"Content-Length": "10", "Accept": "*/*"}


def test_strip_request_keeps_te_trailers_and_websocket_upgrade() -> None:
    headers = Headers(te="trailers", upgrade="websocket", connection="keep-alive, Upgrade")
    headers["Sec-WebSocket-Key"] = "abc"
    strip_request_headers(headers)
    assert dict(headers) == {
        "te": "trailers",
        "upgrade": "websocket",
        "Sec-WebSocket-Key": "abc",
        "Connection": "Upgrade",
    }


def test_websocket_handshakes_never_negotiate_extensions() -> None:
    """permessage-deflate would let a few bytes inflate into a huge message the proxy must scan."""
    for plain in (False, True):  # mitmproxy's raw fields, and a plain mapping
        req: Any = {} if plain else Headers()
        req.update(
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Extensions": "permessage-deflate",
            }
        )
        strip_request_headers(req)
        assert "Sec-WebSocket-Extensions" not in req and "sec-websocket-extensions" not in req
        resp: Any = {} if plain else Headers()
        resp.update(
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Extensions": "permessage-deflate",
            }
        )
        strip_response_headers(resp, strip_set_cookie=False)
        assert "Sec-WebSocket-Extensions" not in resp and resp["Upgrade"] == "websocket"
    other = Headers(**{"Sec-WebSocket-Extensions": "x"})  # not a handshake: an ordinary header
    strip_request_headers(other)
    assert other["Sec-WebSocket-Extensions"] == "x"


def test_strip_response_headers() -> None:
    headers = Headers(
        [
            (b"Set-Cookie", b"session=abc"),
            (b"Set-Cookie", b"other=1"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"X-Agent-Vault-Error", b"forged"),
            (b"Connection", b"close"),
            (b"Content-Type", b"application/json"),
        ]
    )
    keep = headers.copy()
    strip_response_headers(headers, strip_set_cookie=True)
    assert dict(headers) == {"Content-Type": "application/json"}
    strip_response_headers(keep, strip_set_cookie=False)
    assert keep.get_all("set-cookie") == ["session=abc", "other=1"]


# --- redaction --------------------------------------------------------------------------------------


def test_redact_bytes_and_text() -> None:
    secrets = [("OPENAI_KEY", SECRET.encode())]
    out, keys = redact_bytes(b'{"echo": "' + SECRET.encode() + b'"}', secrets)
    assert out == b'{"echo": "[REDACTED:OPENAI_KEY]"}' and keys == {"OPENAI_KEY"}
    assert redact_text(f"Bearer {SECRET}", secrets) == ("Bearer [REDACTED:OPENAI_KEY]", {"OPENAI_KEY"})
    assert redact_text("nothing", secrets) == ("nothing", set())
    assert redact_bytes(b"x", []) == (b"x", set())


def test_stream_redaction_across_a_split_inside_the_secret() -> None:
    r = StreamRedactor([("OPENAI_KEY", SECRET.encode())])
    first = r.feed(b"data: {'k': 'sk-live-01234")
    assert first == b"data: {'k': '"  # only the possible secret prefix is held back
    second = r.feed(b"56789abcdef'}\n\n")
    assert second == b"[REDACTED:OPENAI_KEY]'}\n\n"
    assert r.flush() == b"" and r.redacted_keys == {"OPENAI_KEY"}


def test_stream_redaction_does_not_delay_unrelated_events() -> None:
    r = StreamRedactor([("K", SECRET.encode())])
    assert r.feed(b"data: hello\n\n") == b"data: hello\n\n"
    assert r.feed(b"data: s") == b"data: "  # "s" could start the secret
    assert r.feed(b"ure\n\n") == b"sure\n\n"
    chunk = b"x" * 65536
    assert r.feed(chunk) is chunk  # fast path: no copy
    assert StreamRedactor([]).feed(chunk) is chunk


def reference_redact(data: bytes, secrets: list[tuple[str, bytes]]) -> bytes:
    """Leftmost, longest-at-a-position, non-overlapping replacement, written naively."""
    keys: dict[bytes, str] = {}
    for k, v in secrets:
        if v:
            keys.setdefault(v, k)
    order = sorted(keys, key=len, reverse=True)
    out, i = bytearray(), 0
    while i < len(data):
        for s in order:
            if data.startswith(s, i):
                out += b"[REDACTED:" + keys[s].encode() + b"]"
                i += len(s)
                break
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


secret_bytes = st.binary(min_size=1, max_size=6).map(lambda b: bytes(97 + x % 3 for x in b))
data_bytes = st.binary(max_size=80).map(lambda b: bytes(97 + x % 4 for x in b))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), secret_bytes), min_size=1, max_size=4),
    data_bytes,
    st.lists(st.integers(min_value=0, max_value=80), max_size=12),
)
def test_stream_redactor_matches_whole_buffer_redaction(
    secrets: list[tuple[str, bytes]], data: bytes, cuts: list[int]
) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    r = StreamRedactor(secrets)
    outputs = [r.feed(c) for c in chunks] + [r.flush()]
    expected = reference_redact(data, secrets)
    assert b"".join(outputs) == expected
    assert redact_bytes(data, secrets)[0] == expected
    joined = b"".join(outputs)
    for _, s in secrets:
        assert s not in joined
        for out in outputs:
            assert s not in out


@given(st.text(min_size=8, max_size=40).filter(lambda v: not any(0xD800 <= ord(c) <= 0xDFFF for c in v)))
@settings(max_examples=200, deadline=None)
def test_every_json_echo_of_an_injected_value_is_redacted(value: str) -> None:
    """Whatever an echo's JSON encoder escapes (quotes, backslashes, control and non-ASCII characters,
    `/` as `\\/` or not), the echoed value is found and replaced (SPEC §5.9)."""
    inj = Injection()
    inj.add_secret("K", value)
    for ascii_only in (True, False):
        inside = json.dumps({"v": value}, ensure_ascii=ascii_only)
        for echo in (inside, inside.replace("/", "\\/")):
            out, keys = redact_bytes(echo.encode("utf-8", "surrogateescape"), inj.secrets)
            assert keys == {"K"} and json.loads(out) == {"v": "[REDACTED:K]"}, (value, echo)
