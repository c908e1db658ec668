"""Host normalisation, path safety and service matching (SPEC §5.3, §5.4)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.env import base_env
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_vault.hostpath import InvalidHost, canonical_path, ip_of, normalize_host, path_is_safe
from agent_vault.matching import Denied, Match, ServiceIndex
from agent_vault.servicedef import ServiceDef


def sd(name: str, host: str, **kw: Any) -> ServiceDef:
    data: dict[str, Any] = {"name": name, "host": host, "auth": {"type": "bearer", "token": "K"}}
    data.update(kw)
    return ServiceDef.model_validate(data)


def matched(result: Match | Denied | None) -> str:
    assert isinstance(result, Match), result
    return result.service.name


# --- normalize_host ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        (" API.Example.COM. ", "api.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("a_b.bücher.de", "a_b.xn--bcher-kva.de"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("example。com", "example.com"),  # ideographic full stop (UTS-46)
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("localhost", "localhost"),
    ],
)
def test_normalize_host(raw: str, norm: str) -> None:
    assert normalize_host(raw) == norm


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "  ",
        ".",
        "a b.com",
        "evil.com/x",
        "user@evil.com",
        "evil%2ecom",
        "fe80::1%eth0",
        "a\x00b.com",
        "a\r\n.com",
        "a..com",
        "x" * 64 + ".com",
        ".".join(["abcdefghi"] * 26),  # 259 chars
        "1.2.3.4.5",
        "256.0.0.1",
        "example.123",
        "08.0.0.1",
        "1::2::3",
        "a:b",
        "a!b.com",
    ],
)
def test_normalize_host_rejects(bad: str) -> None:
    with pytest.raises(InvalidHost) as exc:
        normalize_host(bad)
    if len(bad.strip()) > 3:
        assert bad.strip() not in str(exc.value)


def test_ip_of_unmaps_ipv4_mapped() -> None:
    mapped = normalize_host("[::ffff:127.0.0.1]")
    assert ":" in mapped  # stays IPv6 text
    assert ip_of(mapped) == ipaddress.IPv4Address("127.0.0.1")
    assert ip_of("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert ip_of("[::1]") == ipaddress.IPv6Address("::1")
    assert ip_of("example.com") is None


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[A-Za-z0-9.\-_]{1,30}", fullmatch=True))
def test_normalize_host_is_idempotent_or_invalid(raw: str) -> None:
    try:
        once = normalize_host(raw)
    except InvalidHost:
        return
    assert normalize_host(once) == once
    assert once == once.lower() and once.isascii() and " " not in once and len(once) <= 253


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_integer_ipv4_forms_agree(n: int) -> None:
    dotted = str(ipaddress.IPv4Address(n))
    assert normalize_host(str(n)) == dotted
    assert normalize_host(hex(n)) == dotted
    assert normalize_host("0" + oct(n)[2:]) == dotted


# --- paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("/v1/chat/completions?x=../..", True),
        ("/files/a.b/..c/...", True),
        ("/", True),
        ("/a/../b", False),
        ("/a/./b", False),
        ("/a/..", False),
        ("/a/%2e%2e/b", False),
        ("/a/%2E./b", False),
        ("/a/.%2e/b", False),
        ("/a/%2e/b", False),
        ("/a/..;x=1/b", False),
        ("/a%2Fb", False),
        ("/a%2fb", False),
        ("/a%5Cb", False),
        ("/a\\b", False),
    ],
)
def test_path_is_safe(path: str, safe: bool) -> None:
    assert path_is_safe(path) is safe


@pytest.mark.parametrize(
    ("path", "canon"),
    [
        ("/api?x=1", "/api"),
        ("", "/"),
        ("/%61dmin", "/admin"),
        ("//admin//x", "/admin/x"),
        ("/public/../admin", "/admin"),
        ("/a/%2e%2e/b", "/b"),
        ("/a%2fb", "/a%2Fb"),
        ("/a/b/..", "/a/"),
    ],
)
def test_canonical_path(path: str, canon: str) -> None:
    assert canonical_path(path) == canon


# --- matching --------------------------------------------------------------------------------------


def test_path_prefix_matches_whole_segments() -> None:
    idx = ServiceIndex([sd("api", "h.com", path="/api")])
    for ok in ("/api", "/api/", "/api/x", "/api?q=1", "/api/x/y?z"):
        assert matched(idx.match("h.com", 443, "GET", ok)) == "api"
    for no in ("/apix", "/ap", "/", "/other/api"):
        assert idx.match("h.com", 443, "GET", no) is None


def test_root_path_matches_everything() -> None:
    idx = ServiceIndex([sd("all", "h.com")])
    assert matched(idx.match("h.com", 443, "GET", "/anything/at/all?x")) == "all"


def test_wildcard_matches_exactly_one_label() -> None:
    idx = ServiceIndex([sd("wild", "*.example.com")])
    assert matched(idx.match("api.example.com", 443, "GET", "/")) == "wild"
    assert idx.match("example.com", 443, "GET", "/") is None
    assert idx.match("a.b.example.com", 443, "GET", "/") is None
    assert idx.match("evilexample.com", 443, "GET", "/") is None
    assert idx.could_match("api.example.com", 443)
    assert not idx.could_match("example.com", 443)
    assert not idx.could_match("a.b.example.com", 443)


def test_exact_host_beats_wildcard_even_with_shorter_path() -> None:
    idx = ServiceIndex(
        [sd("wild", "*.example.com", path="/v1/deep", port=443), sd("exact", "api.example.com")]
    )
    assert matched(idx.match("api.example.com", 443, "GET", "/v1/deep/x")) == "exact"


def test_port_beats_no_port_and_port_must_match() -> None:
    idx = ServiceIndex([sd("any", "h.com", path="/v1"), sd("tls", "h.com", port=443)])
    assert matched(idx.match("h.com", 443, "GET", "/v1/x")) == "tls"
    assert matched(idx.match("h.com", 8443, "GET", "/v1/x")) == "any"
    assert idx.match("h.com", 8443, "GET", "/other") is None
    assert idx.could_match("h.com", 8443)  # "any" covers every port
    only_port = ServiceIndex([sd("tls", "h.com", port=443)])
    assert only_port.could_match("h.com", 443) and not only_port.could_match("h.com", 80)


def test_longer_path_then_definition_order() -> None:
    idx = ServiceIndex(
        [sd("root", "h.com"), sd("ver-1", "h.com", path="/v1"), sd("ver-1-again", "h.com", path="/v1")]
    )
    assert matched(idx.match("h.com", 443, "GET", "/v1/x")) == "ver-1"
    assert idx.match("h.com", 443, "GET", "/v1/x") == Match(idx.services[1], 1)
    assert matched(idx.match("h.com", 443, "GET", "/v2")) == "root"


def test_disabled_best_match_is_denied_not_fallen_through() -> None:
    idx = ServiceIndex([sd("broad", "h.com"), sd("admin", "h.com", path="/admin", enabled=False)])
    assert idx.match("h.com", 443, "GET", "/admin/users") == Denied("service_disabled", "admin", None)
    # Encoded and dotted spellings of the same path cannot slip past the disabled rule.
    for sneaky in ("/%61dmin/users", "//admin", "/public/../admin"):
        assert idx.match("h.com", 443, "GET", sneaky) == Denied("service_disabled", "admin", None)
    assert matched(idx.match("h.com", 443, "GET", "/public")) == "broad"
    assert idx.could_match("h.com", 443)
    assert ServiceIndex([sd("off", "x.com", enabled=False)]).could_match("x.com", 443)


def test_method_restriction_picks_next_allowing_service() -> None:
    idx = ServiceIndex(
        [sd("read", "h.com", path="/v1", methods=["GET"]), sd("write", "h.com", methods=["POST", "PUT"])]
    )
    assert matched(idx.match("h.com", 443, "GET", "/v1/x")) == "read"
    assert matched(idx.match("h.com", 443, "POST", "/v1/x")) == "write"
    assert idx.match("h.com", 443, "DELETE", "/v1/x") == Denied(
        "method_not_allowed", "read", ["GET", "POST", "PUT"]
    )
    assert idx.match("h.com", 443, "get", "/v1/x") == Denied(
        "method_not_allowed", "read", ["GET", "POST", "PUT"]
    )


def test_method_restriction_skips_disabled_lower_candidates() -> None:
    idx = ServiceIndex([sd("read", "h.com", methods=["GET"]), sd("off", "*.com.example", enabled=False)])
    assert idx.match("h.com", 443, "POST", "/") == Denied("method_not_allowed", "read", ["GET"])
    idx2 = ServiceIndex([sd("read", "h.com", methods=["GET"]), sd("off", "h.com", enabled=False)])
    assert idx2.match("h.com", 443, "POST", "/") == Denied("method_not_allowed", "read", ["GET"])


def test_host_header_is_not_an_input() -> None:
    # The caller passes the connection target; a spoofed Host header has no parameter to travel in.
    idx = ServiceIndex([sd("openai", "api.openai.com")])
    assert idx.match("evil.com", 443, "GET", "/") is None
    assert idx.match(normalize_host("API.OPENAI.COM."), 443, "GET", "/") is not None


def test_no_services() -> None:
    idx = ServiceIndex([])
    assert len(idx) == 0
    assert idx.match("h.com", 443, "GET", "/") is None
    assert not idx.could_match("h.com", 443)


def test_ten_thousand_services() -> None:
    services = [sd(f"svc-{i}", f"api{i}.example.com", path=f"/v{i % 7}") for i in range(9_998)]
    services.append(sd("wild", "*.tenant.example.org"))
    services.append(sd("last", "api9995.example.com", path="/v6/special", methods=["POST"]))
    idx = ServiceIndex(services)
    assert len(idx) == 10_000
    assert matched(idx.match("api9995.example.com", 443, "POST", "/v6/special/x")) == "last"
    assert matched(idx.match("api9995.example.com", 443, "GET", "/v6/special/x")) == "svc-9995"
    assert matched(idx.match("api5000.example.com", 443, "GET", "/v2/x")) == "svc-5000"
    assert matched(idx.match("acme.tenant.example.org", 443, "GET", "/")) == "wild"
    assert idx.match("api5000.example.com", 443, "GET", "/v3") is None
    assert idx.match("nowhere.example.com", 443, "GET", "/") is None
    assert idx.could_match("api1.example.com", 443) and not idx.could_match("api1.example.net", 443)


def test_pure_modules_import_neither_mitmproxy_nor_the_orm(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import agent_vault.servicedef, agent_vault.proxy.auth\n"
        "import agent_vault.hostpath, agent_vault.matching, agent_vault.snapshot, agent_vault.proxy.inject\n"
        "import agent_vault.proxy.decide, agent_vault.proxy.redact\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'mitmproxy', 'sqlmodel', 'sqlalchemy'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=base_env(tmp_path))
