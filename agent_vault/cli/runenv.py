"""The environment of a `vault run` child (SPEC §7.2), as a pure function of the inherited environment."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import quote

CA_VARS = (
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "DENO_CERT",
)
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "NODE_USE_ENV_PROXY")
AGENT_VARS = ("AGENT_VAULT_TOKEN", "AGENT_VAULT_ADDR", "AGENT_VAULT_VAULT")
#: Every variable the wrapper sets; inherited copies in any letter case are removed first.
MANAGED = frozenset(v.upper() for v in (*AGENT_VARS, *PROXY_VARS, *CA_VARS))
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1")


def split_hosts(value: str) -> list[str]:
    return [h.strip() for h in value.replace(" ", ",").split(",") if h.strip()]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def merge_no_proxy(
    inherited: Mapping[str, str], extra: Iterable[str], service_hosts: Iterable[str]
) -> list[str]:
    """Inherited NO_PROXY/no_proxy (any case) + --no-proxy + defaults, de-duplicated, order kept.

    A default entry equal to the host of a service of the vault is left out, so a service on a local address
    is still reached through the proxy. If any service is on a loopback name, all three loopback defaults are
    left out: several clients (axios) treat any loopback entry as covering every loopback name.
    """
    entries: list[str] = []
    rank = {"NO_PROXY": 0, "no_proxy": 1}
    for name in sorted((k for k in inherited if k.upper() == "NO_PROXY"), key=lambda k: rank.get(k, 2)):
        entries += split_hosts(inherited[name])
    for item in extra:
        entries += split_hosts(item)
    hosts = {h.lower().strip("[]") for h in service_hosts}
    if any(_is_loopback(h) for h in hosts):
        hosts |= set(DEFAULT_NO_PROXY)
    entries += [d for d in DEFAULT_NO_PROXY if d not in hosts]
    seen: set[str] = set()
    merged = []
    for e in entries:
        key = e.lower()
        if key not in seen:
            seen.add(key)
            merged.append(e)
    return merged


def proxy_url(token: str, vault: str, host: str, port: int) -> str:
    """`http://<token>:<vault>@host:port` with the userinfo percent-encoded (IPv6 hosts bracketed)."""
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{quote(token, safe='')}:{quote(vault, safe='')}@{h}:{port}"


def build_child_env(
    inherited: Mapping[str, str],
    *,
    token: str,
    vault: str,
    addr: str,
    proxy_host: str,
    proxy_port: int,
    ca_bundle: str,
    no_proxy: Iterable[str] = (),
    placeholders: Iterable[str] = (),
    canaries: Mapping[str, str] | None = None,
    service_hosts: Iterable[str] = (),
) -> dict[str, str]:
    """The child's environment: the inherited one minus every managed variable (any case), plus SPEC §7.2."""
    merged_no_proxy = ",".join(merge_no_proxy(inherited, no_proxy, service_hosts))
    env = {k: v for k, v in inherited.items() if k.upper() not in MANAGED}
    url = proxy_url(token, vault, proxy_host, proxy_port)
    env.update({"AGENT_VAULT_TOKEN": token, "AGENT_VAULT_ADDR": addr, "AGENT_VAULT_VAULT": vault})
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[name] = url
    env["NO_PROXY"] = env["no_proxy"] = merged_no_proxy
    env["NODE_USE_ENV_PROXY"] = "1"
    for name in CA_VARS:
        env[name] = ca_bundle
    for key in placeholders:
        env[key] = "{{" + key + "}}"
    env.update(canaries or {})
    return env
