"""Property tests for the parsers of untrusted input not fuzzed elsewhere (SPEC §3.2, §5.4, §5.6, §8, §10).

Already covered in tests/proxy and tests/unit: Proxy-Authorization, `normalize_host` idempotence,
service definitions, the stream redactor, ciphertexts. Here:

* placeholder substitution (`proxy/inject.py`): text, request line and headers, bodies, injection;
* proposal bodies (`domain/changeset.parse` and `POST /v1/proposals`);
* names and the `X-Vault` / `Authorization` headers of the control API;
* `since=` timestamps of the log endpoints;
* CLI durations (`cli/durations.py`);
* path canonicalisation and the path safety test of `hostpath.py`, and host charset / IP parsing.

Every property is checked against an independent oracle written from the SPEC, or is an invariant
(round trip, "only the documented error", "a value for a key outside the allowed set never appears").
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote

import hypothesis.strategies as st
import pytest
import typer
from helpers.core import OWNER_EMAIL, OWNER_PASSWORD, make_core
from hypothesis import HealthCheck, example, given, settings
from mitmproxy.http import Headers
from starlette.testclient import TestClient

from agent_vault.api.app import create_app
from agent_vault.api.observability import _parse_since
from agent_vault.audit.chain import utc_ts
from agent_vault.cli.durations import duration_param, parse_duration
from agent_vault.core import Core
from agent_vault.domain import changeset as cs
from agent_vault.domain.names import RESERVED_VAULTS, check_email, check_key, check_name, check_vault_name
from agent_vault.errors import AgentVaultError, InvalidRequest, SubstitutionError
from agent_vault.hostpath import InvalidHost, canonical_path, ip_of, normalize_host, path_is_safe
from agent_vault.proxy.inject import build_injection, substitute_body, substitute_request, substitute_text
from agent_vault.servicedef import ApiKeyAuth, BearerAuth, CustomAuth

FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None)
SLOW = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- placeholder substitution (SPEC §5.6) ----------------------------------------------------------

#: Independent oracles written from SPEC §5.6 (KEY follows the key rule, at most 128 characters).
SPEC_PLACEHOLDER = re.compile(r"\{\{ *([A-Z][A-Z0-9_]{0,127}) *\}\}")
SPEC_URL_PLACEHOLDER = re.compile(
    r"(?:\{|%7[bB])(?:\{|%7[bB])(?: |%20)*([A-Z][A-Z0-9_]{0,127})(?: |%20)*(?:\}|%7[dD])(?:\}|%7[dD])"
)
KEYS = ["A", "API_KEY", "B2", "OTHER_KEY", "X"]
FRAGMENT = st.text(alphabet="{} %7BbDd20aAKE_Y/?&=+.-x", max_size=12)


def _placeholder(key: str) -> st.SearchStrategy[str]:
    forms = [
        "{{%s}}",
        "{{ %s }}",
        "{{  %s}}",
        "%%7B%%7B%s%%7D%%7D",
        "%%7b%%7B%%20%s%%7d%%7D",
        "{%s}}",
        "{{%s}",
    ]
    return st.sampled_from(forms).map(lambda f: f % key)


#: Text mixing noise, well-formed placeholders and near misses for the known keys.
template = st.lists(st.one_of(FRAGMENT, st.sampled_from(KEYS).flatmap(_placeholder)), max_size=8).map("".join)


@st.composite
def key_values(draw: st.DrawFn, *, ctl: bool = False) -> tuple[dict[str, str], set[str]]:
    """Values for every key, each tagged `#i#` (a marker no template contains), and the allowed subset.

    Values may themselves contain placeholders: substitution is single-pass, so those stay literal.
    """
    alphabet = st.characters(codec="utf-8", exclude_characters="#" if ctl else "#\r\n\x00")
    values = {
        k: f"v#{i}#" + draw(st.one_of(st.text(alphabet, max_size=8), _placeholder(KEYS[0])))
        for i, k in enumerate(KEYS)
    }
    allowed = set(draw(st.lists(st.sampled_from(KEYS), unique=True)))
    return values, allowed


def _spec_sub(
    pattern: re.Pattern[str], text: str, values: dict[str, str], allowed: set[str], enc: Any
) -> str:
    return pattern.sub(lambda m: enc(values[m[1]]) if m[1] in allowed else m[0], text)


def _assert_forbidden_absent(out: str, values: dict[str, str], allowed: set[str]) -> None:
    for key, value in values.items():
        if key not in allowed:
            marker = value[: value.index("#", 2) + 1]  # `v#i#`: unique to this value
            assert marker not in out and quote(marker, safe="") not in out, key


@FAST
@given(template, key_values())
def test_substitute_text_raw_matches_spec_and_only_allowed_keys(
    text: str, kv: tuple[dict[str, str], set[str]]
) -> None:
    values, allowed = kv
    out, used = substitute_text(text, values, allowed, encoding="raw")
    assert out == _spec_sub(SPEC_PLACEHOLDER, text, values, allowed, lambda v: v)
    assert set(used) <= allowed and len(used) == len(set(used))
    assert set(used) == {m[1] for m in SPEC_PLACEHOLDER.finditer(text) if m[1] in allowed}
    _assert_forbidden_absent(out, values, allowed)
    assert substitute_text(text, values, set(), encoding="raw") == (text, [])


@FAST
@given(template, key_values())
def test_substitute_text_url_encodes_and_cannot_add_url_structure(
    text: str, kv: tuple[dict[str, str], set[str]]
) -> None:
    values, allowed = kv
    out, used = substitute_text(text, values, allowed, encoding="url")
    assert out == _spec_sub(SPEC_URL_PLACEHOLDER, text, values, allowed, lambda v: quote(v, safe=""))
    assert set(used) <= allowed
    _assert_forbidden_absent(out, values, allowed)
    for ch in "/?#&= ":  # a value can never add a path segment, a query, a fragment or a parameter
        assert out.count(ch) <= text.count(ch), ch


@FAST
@given(
    st.dictionaries(st.sampled_from(["Authorization", "X-Api", "Accept", "x-api"]), template, max_size=3),
    template,
    template,
    key_values(ctl=True),
    st.sets(st.sampled_from(["header", "path", "query", "body"])),
    st.booleans(),
)
def test_substitute_request_only_allowed_keys_only_enabled_surfaces(
    raw_headers: dict[str, str],
    path_part: str,
    query_part: str,
    kv: tuple[dict[str, str], set[str]],
    surfaces: set[str],
    mitm: bool,
) -> None:
    values, allowed = kv
    allowed_values = {k: values[k] for k in allowed}
    path = "/" + path_part.replace("?", "") + "?" + query_part
    headers: Any = (
        Headers([(k.encode(), v.encode()) for k, v in raw_headers.items()]) if mitm else dict(raw_headers)
    )
    before = [(k, headers[k]) for k in headers]
    header_uses = {
        m[1]
        for _, v in before
        for m in SPEC_PLACEHOLDER.finditer(v)
        if m[1] in allowed and "header" in surfaces
    }
    bad = {k for k in header_uses if re.search(r"[\r\n\x00]", values[k])}
    try:
        new_path, used = substitute_request(headers, path, allowed_values, surfaces)
    except SubstitutionError as e:
        assert bad and e.key in bad
        assert values[e.key] not in str(e) and values[e.key] not in repr(e)
        return
    assert not bad
    assert set(used) <= allowed
    base, _, qs = new_path.partition("?")
    url = lambda v: quote(v, safe="")  # noqa: E731
    exp_base = "/" + path_part.replace("?", "")
    if "path" in surfaces:
        exp_base = _spec_sub(SPEC_URL_PLACEHOLDER, exp_base, values, allowed, url)
    exp_qs = (
        _spec_sub(SPEC_URL_PLACEHOLDER, query_part, values, allowed, url)
        if "query" in surfaces
        else query_part
    )
    assert (base, qs) == (exp_base, exp_qs)
    for k, v in before:
        exp = _spec_sub(SPEC_PLACEHOLDER, v, values, allowed, lambda x: x) if "header" in surfaces else v
        assert headers[k] == exp
    everything = new_path + "\n".join(headers[k] for k in headers)
    _assert_forbidden_absent(everything, values, allowed)


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), template, st.text()
)
json_tree = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(string.ascii_lowercase, max_size=5), inner)
    ),
    max_leaves=12,
)


def _map_strings(tree: Any, f: Any) -> Any:
    if isinstance(tree, str):
        return f(tree)
    if isinstance(tree, list):
        return [_map_strings(x, f) for x in tree]
    if isinstance(tree, dict):
        return {k: _map_strings(v, f) for k, v in tree.items()}
    return tree


@FAST
@given(
    json_tree,
    key_values(ctl=True),
    st.sampled_from(["application/json", "application/vnd.api+json; charset=utf-8"]),
)
def test_substitute_body_json_round_trips(tree: Any, kv: tuple[dict[str, str], set[str]], ctype: str) -> None:
    """A JSON body stays valid JSON and decodes to the same document with allowed placeholders
    replaced by the exact values, whatever characters the values hold."""
    values, allowed = kv
    body = json.dumps(tree).encode()
    out, used = substitute_body(body, ctype, None, values, allowed)
    expected = _map_strings(tree, lambda s: _spec_sub(SPEC_PLACEHOLDER, s, values, allowed, lambda v: v))
    assert json.loads(out) == expected
    assert set(used) <= allowed
    _assert_forbidden_absent(out.decode("utf-8", "surrogateescape"), values, allowed)


form_value = st.lists(
    st.one_of(
        st.text(alphabet=string.ascii_lowercase + " +&=%", max_size=5).map(lambda s: ("text", s)),
        st.tuples(st.sampled_from(KEYS), st.sampled_from(["{{%s}}", "{{ %s }}", "%%7B%%7B%s%%7D%%7D"])).map(
            lambda t: ("ph", t[1] % t[0])
        ),
    ),
    max_size=4,
)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "key"]), form_value), max_size=4), key_values(ctl=True))
def test_substitute_body_form_round_trips(
    pairs: list[tuple[str, list[tuple[str, str]]]], kv: tuple[dict[str, str], set[str]]
) -> None:
    """A form body keeps its fields: each decodes to its text with allowed placeholders replaced."""
    values, allowed = kv

    def encode(parts: list[tuple[str, str]]) -> str:
        return "".join(quote_plus(s) if kind == "text" else s for kind, s in parts)

    def decoded(parts: list[tuple[str, str]]) -> str:
        return "".join(unquote(s) for _, s in parts)

    body = "&".join(f"{name}={encode(parts)}" for name, parts in pairs).encode()
    out, used = substitute_body(body, "application/x-www-form-urlencoded", None, values, allowed)
    got = parse_qsl(out.decode(), keep_blank_values=True)
    want = [
        (name, _spec_sub(SPEC_PLACEHOLDER, decoded(parts), values, allowed, lambda v: v))
        for name, parts in pairs
    ]
    assert got == want
    assert set(used) <= allowed


@FAST
@given(
    st.binary(max_size=80) | template.map(str.encode),
    st.none()
    | st.sampled_from(["text/plain", "application/json", "multipart/form-data; b=x", "image/png", "a/b+xml"]),
    st.none() | st.sampled_from(["", "identity", "gzip", "br"]),
    key_values(ctl=True),
)
def test_substitute_body_arbitrary_bytes_never_raise(
    body: bytes, ctype: str | None, cenc: str | None, kv: tuple[dict[str, str], set[str]]
) -> None:
    values, allowed = kv
    out, used = substitute_body(body, ctype, cenc, values, allowed)
    assert set(used) <= allowed
    if not used:
        assert out == body
    if (cenc or "").strip().lower() not in ("", "identity") or (ctype or "").startswith("multipart/"):
        assert (out, used) == (body, [])
    _assert_forbidden_absent(out.decode("utf-8", "replace"), values, allowed)


@FAST
@given(st.text(st.characters(codec="utf-8"), max_size=30), st.sampled_from(["bearer", "api-key", "custom"]))
@example("sk-\r\nX-Injected: 1", "bearer")
@example("abc\x00def", "custom")
def test_build_injection_refuses_only_ctl_and_never_echoes(value: str, kind: str) -> None:
    auth: Any = {
        "bearer": BearerAuth(token="API_KEY"),
        "api-key": ApiKeyAuth(key="API_KEY", header="X-Api-Key", prefix="Key "),
        "custom": CustomAuth(headers={"X-Sig": "t={{ API_KEY }};v=1"}),
    }[kind]
    try:
        inj = build_injection(auth, {"API_KEY": value})
    except SubstitutionError as e:
        assert re.search(r"[\r\n\x00]", value)
        # the text is the same whatever the value was (a short value may occur in it by chance)
        assert e.key == "API_KEY" and str(e) == str(SubstitutionError("API_KEY"))
        return
    assert not re.search(r"[\r\n\x00]", value)
    expected = {"bearer": "Bearer " + value, "api-key": "Key " + value, "custom": f"t={value};v=1"}[kind]
    assert list(inj.headers.values()) == [expected]
    assert inj.used_keys == ["API_KEY"]
    assert (len(value) >= 8) == (("API_KEY", value.encode("utf-8", "surrogateescape")) in inj.secrets)
    # repr names keys only: it reads the same for any value of that length class
    assert repr(inj) == repr(build_injection(auth, {"API_KEY": "z" * len(value)}))


# --- proposal bodies (SPEC §8) ----------------------------------------------------------------------

SECRET = "sk-fuzz-" + uuid.uuid4().hex
#: Free text where an agent might paste a secret: it must never come back in an error.
free_text = st.one_of(st.text(max_size=20), st.just(SECRET), st.text(max_size=5).map(lambda s: s + SECRET))
names = st.one_of(st.sampled_from(["github", "stripe", "new-svc", "Bad Name", "", "a"]), st.text(max_size=8))
keys = st.one_of(st.sampled_from(["GITHUB_TOKEN", "NEW_KEY", "bad-key", "", "K" * 129]), st.text(max_size=8))
auth_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["bearer", "basic", "api-key", "custom", "passthrough", "nope"])},
    optional={
        "token": keys,
        "key": keys,
        "username": keys,
        "password": keys,
        "header": st.sampled_from(["X-Api-Key", "bad header", ""]),
        "prefix": free_text,
        "value": free_text,
    },
)
service_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["set", "delete", "upsert", ""]),
        "name": names,
        "host": st.sampled_from(["api.example.com", "*.example.com", "10.0.0.1", "bad host", ""]),
        "path": st.sampled_from(["/", "/v1", "v1", "/../x"]),
        "port": st.one_of(st.none(), st.integers(-1, 70000)),
        "methods": st.one_of(st.none(), st.lists(st.sampled_from(["GET", "POST", "get", ""]), max_size=3)),
        "auth": auth_like,
        "description": free_text,
        "extra": free_text,
    },
)
credential_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["set", "delete", "rotate"]),
        "key": keys,
        "description": free_text,
        "obtain": free_text,
        "value": free_text,
        "secret": free_text,
    },
)
proposal_like = st.fixed_dictionaries(
    {},
    optional={
        "services": st.one_of(
            st.lists(service_like, max_size=3), free_text, st.lists(st.integers(), max_size=2)
        ),
        "credentials": st.one_of(st.lists(credential_like, max_size=3), free_text),
        "message": st.one_of(free_text, st.just("m" * 2001 + SECRET), st.integers()),
        "note": free_text,
    },
)
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), free_text),
    # field names are names (errors may cite them as `loc`); values are what must not come back
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
proposal_bodies = st.one_of(proposal_like, any_json)


def _has_value_key(obj: Any) -> bool:
    if isinstance(obj, dict):
        return "value" in obj or any(_has_value_key(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_value_key(v) for v in obj)
    return False


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(proposal_bodies)
@example({"credentials": [{"key": "NEW_KEY", "value": SECRET}]})
@example({"services": [{"action": "delete", "name": SECRET}]})
@example({"credentials": [{"key": SECRET}]})
def test_changeset_parse_accepts_or_refuses_cleanly(data: Any) -> None:
    """Arbitrary JSON: a ChangeSet that survives its storage round trip, or a 422 (400 for a value) that
    names fields and never repeats free text (descriptions, messages, `value`s, unknown fields)."""
    try:
        ch = cs.parse(data)
    except AgentVaultError as e:
        assert (e.code, e.status) in (("invalid_request", 422), ("value_not_allowed", 400)), e.code
        if _has_value_key(data):
            assert e.code == "value_not_allowed"
        assert SECRET not in json.dumps(e.body()) and SECRET not in str(e)
        return
    assert not _has_value_key(data)
    assert len(ch.sets) + len(ch.deletes) + len(ch.creds) > 0
    assert len(ch.sets) + len(ch.deletes) <= cs.MAX_ENTRIES and len(ch.creds) <= cs.MAX_ENTRIES
    stored = cs.load(ch.services_json(), ch.credentials_json(), ch.message)
    assert stored.summary() == ch.summary() and stored.needed_role == ch.needed_role
    assert [s.name for s in stored.sets] == [s.name for s in ch.sets]


@pytest.fixture
def api_core(tmp_path: Path) -> Iterator[Core]:
    with make_core(tmp_path / "home") as c:
        yield c


@pytest.fixture
def client(api_core: Core) -> Iterator[TestClient]:
    """Owner-authenticated client; `agent_token` and `session_token` in `client.app.state`."""
    app = create_app()
    app.state.core = api_core
    with TestClient(app, base_url="http://127.0.0.1:14321") as c:
        login = {"email": OWNER_EMAIL, "password": OWNER_PASSWORD}
        c.headers["Authorization"] = "Bearer " + c.post("/v1/auth/login", json=login).json()["token"]
        c.cookies.clear()  # the login's UI cookie would authenticate requests without a bearer token
        c.put("/v1/vaults/default/credentials/GITHUB_TOKEN", json={"value": SECRET})
        svc = {
            "name": "github",
            "host": "api.github.com",
            "auth": {"type": "bearer", "token": "GITHUB_TOKEN"},
        }
        c.post("/v1/vaults/default/services", json={"password": OWNER_PASSWORD, "service": svc})
        assert c.post("/v1/vaults", json={"name": "team-b"}).status_code == 201
        grant = [{"vault": "default", "role": "member"}]
        r = c.post("/v1/agents", json={"password": OWNER_PASSWORD, "name": "fuzz-agent", "vaults": grant})
        app.state.agent_token = r.json()["token"]
        hdr = {"Authorization": f"Bearer {app.state.agent_token}"}
        app.state.session_token = c.post("/v1/sessions", json={}, headers=hdr).json()["token"]
        yield c


def _assert_error_shape(r: Any) -> dict[str, Any]:
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = dict(r.json())
    if r.status_code >= 400:
        assert isinstance(body["error"], str) and body["error"] and isinstance(body["message"], str)
        assert "hint" in body
    return body


@SLOW
@given(proposal_bodies)
def test_post_proposals_never_5xx_never_echoes(client: TestClient, data: Any) -> None:
    hdr = {"Authorization": f"Bearer {client.app.state.agent_token}"}  # type: ignore[attr-defined]
    r = client.post("/v1/proposals", json=data, headers=hdr)
    body = _assert_error_shape(r)
    assert r.status_code in (201, 400, 422, 429), r.text
    assert SECRET not in r.text
    if r.status_code == 201:
        assert body["status"] == "pending" and body["vault"] == "default"


# --- names, X-Vault and Authorization headers (SPEC §3.2, §8) --------------------------------------


def _name_oracle(s: str) -> bool:
    ok_chars = all(c in string.ascii_lowercase + string.digits + "-" for c in s)
    return 3 <= len(s) <= 64 and ok_chars and s[0] != "-" and s[-1] != "-" and "--" not in s


name_text = st.one_of(
    st.text(max_size=70),
    st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=70),
    st.from_regex(r"[a-z0-9-]{3,10}\n?", fullmatch=True),
    st.sampled_from(sorted(RESERVED_VAULTS)),
)


@FAST
@given(name_text)
@example("team\n")
@example("default")
def test_names_follow_the_spec_rule(s: str) -> None:
    for check, reserved in ((check_name, set()), (check_vault_name, RESERVED_VAULTS)):
        try:
            assert check(s) == s
            accepted = True
        except InvalidRequest as e:
            accepted = False
            assert len(str(e)) < 200
        assert accepted == (_name_oracle(s) and s not in reserved), (check.__name__, s)


@FAST
@given(st.one_of(st.text(max_size=140), st.from_regex(r"[A-Z][A-Z0-9_]{0,140}\n?", fullmatch=True)))
@example("KEY\n")
@example("sk-live-abcdefghijklmnop")
def test_credential_keys_follow_the_spec_rule_and_are_not_echoed(s: str) -> None:
    oracle = 1 <= len(s) <= 128 and s[0] in string.ascii_uppercase
    oracle = oracle and all(c in string.ascii_uppercase + string.digits + "_" for c in s)
    try:
        assert check_key(s) == s
    except InvalidRequest as e:
        assert not oracle
        assert len(s) < 4 or s not in str(e)
        return
    assert oracle


@FAST
@given(st.text(max_size=40) | st.emails())
@example("Owner@Example.COM \n")
@example("a@b.co\nx")
def test_emails_normalise_idempotently(s: str) -> None:
    try:
        e = check_email(s)
    except InvalidRequest:
        return
    assert e == e.strip().lower() and check_email(e) == e
    local, _, domain = e.partition("@")
    assert local and "." in domain and not any(c.isspace() or c == "@" for c in local + domain)


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30
).filter(lambda s: s == s.strip(" \t"))


@SLOW
@given(header_text, st.sampled_from(["owner", "agent", "session"]))
@example("default\n", "agent")
@example("team-b", "agent")
@example("team-b", "session")
def test_x_vault_header_selects_only_granted_vaults(client: TestClient, hint: str, who: str) -> None:
    """`X-Vault` from any caller: 200 only for a vault it may use, else 400/403 -- never 5xx."""
    state = client.app.state  # type: ignore[attr-defined]
    token = {"owner": None, "agent": state.agent_token, "session": state.session_token}[who]
    hdr = {"X-Vault": hint.encode("latin-1")} if hint else {}
    if token:
        hdr["Authorization"] = f"Bearer {token}".encode()
    try:
        r = client.get("/v1/discover", headers=hdr)
    except Exception as e:  # the client refused to send the header (e.g. a bare newline)
        assert "\n" in hint or "\r" in hint, e
        return
    body = _assert_error_shape(r)
    granted = {"owner": {"default", "team-b"}, "agent": {"default"}, "session": {"default"}}[who]
    if hint in granted or (not hint and who != "owner"):
        assert r.status_code == 200 and body["vault"] == (hint or "default"), r.text
        assert SECRET not in r.text
    else:
        assert r.status_code in (400, 403), r.text
        assert body["error"] in ("vault_required", "vault_forbidden")


@SLOW
@given(
    st.one_of(
        header_text, header_text.map(lambda s: "Bearer " + s), header_text.map(lambda s: "bearer  " + s)
    )
)
@example("Bearer av_agt_" + "A" * 43)
@example("Basic Zm9vOmJhcg==")
def test_authorization_header_garbage_is_401(client: TestClient, value: str) -> None:
    r = client.get("/v1/auth/me", headers={"Authorization": value.encode("latin-1")})
    body = _assert_error_shape(r)
    assert r.status_code == 401 and body["error"] == "unauthenticated"
    assert value.strip() == "" or len(value) < 8 or value not in r.text


# --- since= timestamps of /v1/vaults/{v}/logs and /v1/audit ---------------------------------------


@FAST
@given(
    st.one_of(
        st.text(max_size=32),
        st.datetimes(timezones=st.timezones() | st.none()).map(lambda d: d.isoformat()),
        st.tuples(st.datetimes(), st.sampled_from(["Z", "+14:00", "-14:00", "+00:00"])).map(
            lambda t: t[0].isoformat() + t[1]
        ),
    )
)
@example("0001-01-01T00:00:00+14:00")
@example("9999-12-31T23:59:59-14:00")
def test_since_parses_to_a_usable_utc_time_or_422(text: str) -> None:
    try:
        when = _parse_since(text)
    except InvalidRequest as e:
        assert e.status == 422
        return
    assert when is not None
    utc_ts(when)  # what the query layer does with it: must not overflow


@SLOW
@given(st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-01-01T00:00:00Z"]))
def test_since_extremes_over_the_api_are_4xx_not_5xx(client: TestClient, since: str) -> None:
    for url in ("/v1/audit", "/v1/vaults/default/logs"):
        r = client.get(url, params={"since": since})
        _assert_error_shape(r)
        assert r.status_code in (200, 422), r.text


# --- CLI durations (SPEC §10) -----------------------------------------------------------------------

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from("smhdSMHD")), min_size=1, max_size=4),
    st.sampled_from(["", " ", "\t"]),
)
def test_durations_round_trip(parts: list[tuple[int, str]], pad: str) -> None:
    text = pad + "".join(f"{n}{u}" for n, u in parts) + pad
    assert parse_duration(text) == sum(n * UNITS[u.lower()] for n, u in parts)


@FAST
@given(st.integers(0, 10**12))
def test_bare_seconds_round_trip(n: int) -> None:
    assert parse_duration(str(n)) == n
    assert duration_param(str(n), "--ttl") == n


@FAST
@given(st.text(max_size=30) | st.text(alphabet="0123456789smhd²٣ .-", max_size=12))
@example("²")
@example("٣s")
@example("1" * 5000)
def test_durations_never_raise_anything_but_invalid_request(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except InvalidRequest as e:
        assert text[40:] == "" or text not in e.message  # at most 40 characters of the input
        with pytest.raises(typer.BadParameter):
            duration_param(text, "--ttl")
        return
    assert isinstance(seconds, int) and seconds >= 0
    assert text.strip().isascii()
    assert duration_param(None, "--ttl") is None


# --- paths and hosts (SPEC §5.3, §5.4) --------------------------------------------------------------

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def _rfc3986_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, written out literally (the oracle for `canonical_path`)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            nxt = inp.find("/", start)
            seg, inp = (inp, "") if nxt == -1 else (inp[:nxt], inp[nxt:])
            out += seg
    return out


def _canonical_oracle(path: str) -> str:
    p = path.split("?", 1)[0].split("#", 1)[0]

    def dec(m: re.Match[str]) -> str:
        c = chr(int(m[1], 16))
        return c if c in UNRESERVED else "%" + m[1].upper()

    p = re.sub(r"%([0-9a-fA-F]{2})", dec, p)
    p = "/" + p.lstrip("/") if not p.startswith("/") else p
    p = re.sub(r"/{2,}", "/", p)
    return _rfc3986_remove_dot_segments(p) or "/"


path_text = st.lists(
    st.sampled_from(
        ["/", "a", "b", ".", "..", "%2e", "%2E", "%61", "%2f", "%2F", "%7e", "%zz", "?", "#", ";x", "\\"]
    ),
    max_size=10,
).map("".join)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(path_text | st.text(max_size=20))
@example("/a/%2e%2e/b")
@example("//admin/../public")
def test_canonical_path_matches_rfc3986_and_has_no_dot_segments(path: str) -> None:
    out = canonical_path(path)
    assert out.startswith("/") and "//" not in out and "?" not in out and "#" not in out
    assert not any(seg in (".", "..") for seg in out.split("/"))
    assert out == _canonical_oracle(path), path
    if "%" not in path:
        assert canonical_path(out) == out


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(path_text | st.text(max_size=20))
@example("/a/..;x/b")
@example("/a/%2E./b")
def test_path_is_safe_refuses_every_decoded_dot_segment_and_encoded_slash(path: str) -> None:
    p = path.split("?", 1)[0]
    decoded_dots = any(unquote(seg.split(";", 1)[0]) in (".", "..") for seg in p.split("/"))
    encoded_sep = bool(re.search(r"%2f|%5c", p, re.IGNORECASE)) or "\\" in p
    assert path_is_safe(path) == (not decoded_dots and not encoded_sep), path
    if path_is_safe(path) and "%" not in p:
        # nothing for an upstream to resolve: matching sees the path's own segments
        assert canonical_path(path) == _canonical_oracle(re.sub(r"/{2,}", "/", p))


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=40) | st.from_regex(r"\[?[0-9a-fA-Fx:.]{1,30}\]?", fullmatch=True))
@example("[::ffff:7f00:1]")
@example("0x7f.1")
def test_normalized_hosts_are_plain_names_or_canonical_ips(raw: str) -> None:
    try:
        host = normalize_host(raw)
    except InvalidHost as e:
        assert len(raw.strip()) < 4 or raw.strip() not in str(e)
        return
    addr = ip_of(host)
    if ":" in host:
        assert addr is not None and host == ipaddress.IPv6Address(host).compressed
    elif addr is not None:
        assert str(addr) == host  # IPv4: dotted quad, nothing else
    else:
        assert re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", host), host
        assert not re.fullmatch(r"[0-9.]+|.*\.(0x[0-9a-f]*|[0-9]+)", host), host  # no numeric last label
