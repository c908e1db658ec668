"""Path tricks and the scheme rule, pure (SPEC §5.4, §6 `invalid_path`, issue #22).

`normalize_path` is the proxy's one path normalisation: every request is matched on its canonical form,
and a request that may carry a credential (injection or `{{KEY}}` substitution, whatever the auth type)
is refused when the raw path could mean another path to some upstream. `decide` is exercised on a
real `VaultView` with a bearer service and a passthrough service that substitutes, both on the prefix
`/repos/acme`: for every trick the answer is `invalid_path`, or a decision that carries nothing, or a
credential decision on a path every upstream reading keeps inside the prefix.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_vault.domain.principal import Principal
from agent_vault.errors import AgentVaultError
from agent_vault.hostpath import normalize_path
from agent_vault.matching import Denied, Match, ServiceIndex
from agent_vault.proxy.decide import Decision, Identity, decide
from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import VaultView

PREFIX = "/repos/acme"


def sd(name: str, host: str, **kw: Any) -> ServiceDef:
    kw.setdefault("auth", {"type": "bearer", "token": "TOKEN"})
    return ServiceDef.model_validate({"name": name, "host": host, **kw})


SERVICES = [
    sd("bearer-api", "api.example.com", path=PREFIX),
    sd(
        "subst-api",
        "sub.example.com",
        path=PREFIX,
        auth={"type": "passthrough"},
        substitutions={"keys": ["SUB_KEY"]},
    ),
    sd("plain-allowed", "plain.example.com", allow_http=True),
    sd("open-api", "open.example.com", auth={"type": "passthrough"}, path=PREFIX),
]


def view(services: list[ServiceDef] = SERVICES, enforcement: str = "enforce") -> VaultView:
    return VaultView(
        id=1,
        name="default",
        unmatched_policy="passthrough",
        enforcement=enforcement,
        index=ServiceIndex(services),
        services=tuple(services),
        values={"TOKEN": "tok-0123456789abcdef", "SUB_KEY": "sub-0123456789abcdef"},
    )


IDENT = Identity(
    "digest",
    Principal(kind="agent", token_id=1, name="bot", grants={"default": "proxy"}),
    "default",
    "passthrough",
)


def run(host: str, path: str, scheme: str = "https", method: str = "GET", v: VaultView | None = None) -> str:
    """The decision kind (and service) or the error code `decide` gives."""
    try:
        d: Decision = decide(v or view(), IDENT, host, 443, method, path, "p", "d", scheme)
    except AgentVaultError as e:
        return e.code
    return f"{d.kind}:{d.service.name}" if d.service is not None else d.kind


# ---- what some upstream may make of a path ----------------------------------------------------------


def _decode_all(s: str) -> str:
    for _ in range(8):
        d = unquote(s)
        if d == s:
            break
        s = d
    return s


def readings(target: str) -> set[str]:
    """The paths an upstream may act on: RFC 3986 (decode once), double decoding, Tomcat `;params`,
    `\\` as `/`, NFKC folding, NUL truncation, fragment kept or dropped, `//` kept or collapsed,
    Windows trailing dots and spaces; each with dot segments resolved."""
    path = target.split("?", 1)[0]
    out = set()
    for frag in (path, path.split("#", 1)[0]):
        raw = re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), frag)
        for dec in (unquote(frag), _decode_all(frag), raw):
            for p in (dec, unicodedata.normalize("NFKC", dec)):
                p = p.split("\x00", 1)[0].replace("\\", "/")
                for q in (p, "/".join(seg.split(";", 1)[0] for seg in p.split("/"))):
                    segs = q.split("/")
                    win = "/".join(s.rstrip(". ") if s.strip(". ") else s.strip(" ") for s in segs)
                    for r in (q, win):
                        out.add(_resolve(r, collapse=False))
                        out.add(_resolve(r, collapse=True))
    return out


def _resolve(p: str, collapse: bool) -> str:
    if collapse:
        p = re.sub(r"/{2,}", "/", p)
    segs: list[str] = []
    for s in p.split("/")[1:] if p.startswith("/") else p.split("/"):
        if s == "..":
            if segs:
                segs.pop()
        elif s != ".":
            segs.append(s)
    return "/" + "/".join(segs)


def inside(target: str, prefix: str = PREFIX) -> bool:
    return all(r == prefix or r.startswith(prefix + "/") for r in readings(target))


# ---- the tricks -------------------------------------------------------------------------------------

# (trick, decision for both credential services: "refused" = 400 invalid_path, "unmatched" = no service,
# nothing carried, "matched" = the service, on a path inside the prefix for every reading)
TRICKS = [
    ("/repos/acme/../other", "unmatched"),  # canonical /repos/other: no service
    ("/repos/acme/x/../y", "refused"),  # stays inside, but a dot segment to a credential service
    ("/repos/acme/..;/other", "refused"),  # Tomcat/Spring: `..;` is `..`
    ("/repos/acme/..;x=1/other", "refused"),
    ("/repos/acme/.;/x", "refused"),
    ("/repos/acme/%2e%2e/other", "unmatched"),  # canonical /repos/other
    ("/repos/acme/x/%2e%2e/y", "refused"),
    ("/repos/acme/%2E%2E%2Fother", "refused"),  # encoded slash
    ("/repos/acme%2F..%2Fother", "unmatched"),  # segment `acme%2F..%2Fother` is not `acme`
    ("/repos/acme/x%2F..%2F..%2Fother", "refused"),
    ("/repos/acme/.%2e/", "unmatched"),  # canonical /repos/
    ("/repos/acme/x/.%2e/y", "refused"),
    ("/repos/acme/%252e%252e/other", "refused"),  # double encoding
    ("/repos/acme/%25252e%25252e/other", "refused"),
    ("/repos/acme/x%252Fy", "refused"),
    ("/repos/acme/\\..\\other", "refused"),  # backslash
    ("/repos/acme/..%5cother", "refused"),
    ("/repos/acme/x%255c..%255cy", "refused"),
    ("//repos/acme/x", "refused"),  # empty segment: `//host/...` to some frameworks
    ("/repos//acme/x", "refused"),  # a non-collapsing upstream: outside the prefix
    ("/repos/acme//x", "refused"),
    ("/repos/acme;x=1/other", "refused"),  # `;` on the prefix segment: Tomcat reads /repos/acme/other
    ("/repos;x/acme/other", "refused"),
    ("/repos/acme/x;y=1/z", "matched"),  # params after the prefix change nothing
    ("/repos/acme/%00", "refused"),  # NUL
    ("/repos/acme/..%00/other", "refused"),  # NUL truncation: `/repos/acme/..`
    ("/repos/acme/x%0d%0aX-Injected:%201", "refused"),
    ("/repos/acme/\uff0e\uff0e/other", "refused"),  # full-width dots (NFKC: `..`)
    ("/repos/acme/%ef%bc%8e%ef%bc%8e/other", "refused"),
    ("/repos/acme/x\uff0f..\uff0f..\uff0fother", "refused"),  # full-width solidus
    ("/repos/acme/\u2025/other", "refused"),  # two dot leader (NFKC: `..`)
    ("/repos/acme/%c0%ae%c0%ae/other", "refused"),  # overlong UTF-8
    ("/repos/acme/%u002e%u002e/other", "refused"),  # IIS %u escapes
    ("/repos/acme./other", "unmatched"),  # trailing dot on the prefix segment: not `acme`
    ("/repos/acme/...", "refused"),  # all-dot segment (Windows strips trailing dots)
    ("/repos/acme/..%20/other", "refused"),  # `.. ` (Windows strips trailing spaces)
    ("/repos/acme/.", "refused"),  # trailing dot segment
    ("/repos/acme?x=/../", "matched"),  # the query is not the path
    ("/repos/acme/x?/../../other", "matched"),
    ("/repos/other?/repos/acme/", "unmatched"),
    ("/repos/acme/x#/../../other", "refused"),  # a fragment has no business in a request target
    ("/repos/other#/repos/acme/x", "unmatched"),
    ("/repos/acme/issues", "matched"),
    ("/repos/acme", "matched"),
    ("/repos/acme/v1.2/file.txt", "matched"),
    ("/repos/acme/~user/a%20b", "matched"),
    ("/repos/acme/%7Euser", "refused"),  # escaped unreserved: a raw-path router reads another segment
    ("/repos/acme/100%25", "matched"),
    ("/repos/acme/.well-known/x", "matched"),
    ("/repos/acme/caf%C3%A9", "matched"),
    ("/repos/%61cme/x", "refused"),  # `a` to matching, `%61cme` to a server routing on the raw path
]


@pytest.mark.parametrize(("path", "expected"), TRICKS)
@pytest.mark.parametrize("host", ["api.example.com", "sub.example.com"])
def test_trick_decision(host: str, path: str, expected: str) -> None:
    service = {"api.example.com": "injected:bearer-api", "sub.example.com": "passthrough:subst-api"}[host]
    outcome = run(host, path)
    assert (
        outcome
        == {"refused": "invalid_path", "unmatched": "unmatched_passthrough", "matched": service}[expected]
    ), (host, path, outcome)
    if outcome == service:
        assert inside(path), (path, readings(path))


@pytest.mark.parametrize(("path", "expected"), TRICKS)
def test_passthrough_without_credentials_keeps_lenient_matching(path: str, expected: str) -> None:
    """A service that sends nothing is not held to the strict checks: an ambiguous path carries no
    credential, so it is matched (or not) on its canonical form as before."""
    outcome = run("open.example.com", path)
    assert outcome in ("passthrough:open-api", "unmatched_passthrough"), outcome


def test_tricks_that_stay_matched_are_inside_for_every_reading() -> None:
    for path, expected in TRICKS:
        if expected == "matched":
            assert inside(path), (path, readings(path))
        if expected != "matched" and normalize_path(path).problem is None:
            # not refused: then the canonical form must not be under the prefix
            rp = normalize_path(path)
            assert not (rp.canonical == PREFIX or rp.canonical.startswith(PREFIX + "/")), path


def test_semicolon_params_cannot_dodge_a_narrower_disabled_rule() -> None:
    services = [
        sd("broad", "api.example.com", path="/repos"),
        sd("acme-off", "api.example.com", path="/repos/acme", enabled=False),
    ]
    assert run("api.example.com", "/repos/acme/x", v=view(services)) == "service_disabled"
    assert run("api.example.com", "/repos/acme;a/x", v=view(services)) == "invalid_path"
    assert run("api.example.com", "/repos/other;a/x", v=view(services)) == "injected:broad"


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "/",
                "a",
                "acme",
                "repos",
                ".",
                "..",
                "%2e",
                "%2E",
                "%25",
                "%2f",
                "%5c",
                "%00",
                ";x",
                ";",
                "\\",
                "#",
                "?",
                "\uff0e",
                "%u002e",
                "%c0%ae",
                " ",
                "%20",
                "%252e",
            ]
        ),
        max_size=12,
    ).map(lambda parts: "/repos/acme/" + "".join(parts))
    | st.text(max_size=24).map(lambda t: "/repos/acme/" + t)
)
@example("/repos/acme/..;/x")
@example("/repos/acme/%252e%252e/x")
def test_no_credential_reaches_a_path_outside_the_prefix(path: str) -> None:
    """Property: whatever the path, a credential decision on `/repos/acme` only happens when every
    upstream reading of the path stays inside `/repos/acme`."""
    for host, service in (
        ("api.example.com", "injected:bearer-api"),
        ("sub.example.com", "passthrough:subst-api"),
    ):
        if run(host, path) == service:
            assert inside(path), (path, readings(path))


# ---- canonical form ----------------------------------------------------------------------------------


def test_normalize_path_canonical_form_and_fast_path() -> None:
    rp = normalize_path("/repos/acme/issues?state=open")
    assert rp.canonical == "/repos/acme/issues" and rp.problem is None and rp.unparam is None
    assert normalize_path("/%61/b/../c").canonical == "/a/c"
    assert normalize_path("/a;x/b").unparam == "/a/b"
    assert normalize_path("/a/b;x").unparam == "/a/b"
    assert normalize_path("/a/b").unparam is None
    assert normalize_path("*").problem is not None
    assert normalize_path("/a/%2fb").problem == "an encoded / or \\"


def test_match_uses_the_canonical_form_of_normalize_path() -> None:
    idx = ServiceIndex(SERVICES)
    assert isinstance(idx.match("api.example.com", 443, "GET", "/repos/%61cme/x"), Match)
    assert normalize_path("/repos/%61cme/x").problem is not None
    assert idx.match("api.example.com", 443, "GET", "/repos/acme/../x") is None


# ---- scheme -------------------------------------------------------------------------------------------


def test_plain_http_is_refused_for_an_https_only_credential_service() -> None:
    assert run("api.example.com", "/repos/acme/x", scheme="http") == "insecure_scheme"
    assert run("sub.example.com", "/repos/acme/x", scheme="http") == "insecure_scheme"
    assert run("plain.example.com", "/x", scheme="http") == "injected:plain-allowed"
    assert run("open.example.com", "/repos/acme/x", scheme="http") == "passthrough:open-api"
    assert run("api.example.com", "/repos/acme/x", scheme="https") == "injected:bearer-api"


def test_scheme_restricts_without_falling_through_and_dry_run_carries_nothing() -> None:
    services = [
        sd("secret", "api.example.com", path="/admin"),
        sd("open", "api.example.com", auth={"type": "passthrough"}),
    ]
    assert run("api.example.com", "/admin/x", scheme="http", v=view(services)) == "insecure_scheme"
    assert run("api.example.com", "/other", scheme="http", v=view(services)) == "passthrough:open"
    assert run("api.example.com", "/admin/x", scheme="http", v=view(services, "dry-run")) == "would_deny"
    idx = ServiceIndex(services)
    d = idx.match("api.example.com", 80, "GET", "/admin", "http")
    assert d == Denied("insecure_scheme", "secret", None)


def test_insecure_scheme_error_names_the_flag() -> None:
    with pytest.raises(AgentVaultError) as info:
        decide(view(), IDENT, "api.example.com", 80, "GET", "/repos/acme", "p", "d", "http")
    body = info.value.body()
    assert body["error"] == "insecure_scheme" and info.value.status == 403
    assert "--allow-http" in body["hint"] and body["service"] == "bearer-api"
    assert "tok-0123456789abcdef" not in str(body)


def test_service_flags_and_defaults() -> None:
    bearer, subst, plain, open_ = SERVICES
    assert not bearer.allow_http and plain.allow_http
    assert bearer.sends_credentials and subst.sends_credentials and not open_.sends_credentials
    assert subst.effective_redact and not subst.effective_forward_set_cookie
    assert not open_.effective_redact and open_.effective_forward_set_cookie
    legacy = ServiceDef.model_validate_json(
        '{"name": "old", "host": "x.example.com", "auth": {"type": "bearer", "token": "T"}}'
    )
    assert legacy.allow_http is False  # stored definitions from before the field: https-only
    assert ServiceDef.model_validate(legacy.model_dump(mode="json", by_alias=True)) == legacy
