"""One bounded HTTPS POST to a credential endpoint (OAuth2 token endpoint, AWS STS) from the proxy's
loop, through the same egress guard as any upstream (SPEC §5.10).

The host is resolved and checked by `Egress.address`, and that very address is dialled (the URL
names the IP; TLS still verifies the certificate for the host name via SNI), so DNS rebinding cannot
swap it. No redirects, no connection reuse (a pooled connection to one IP could serve another host
name), no proxy from the environment, a total timeout, and at most `MAX_ANSWER` bytes read (the
answer is not decompressed: `Accept-Encoding: identity`). TLS trusts what the proxy trusts for
upstreams (certifi + the system bundle + `--upstream-ca`).

Every failure raises `CredentialUnavailable` naming the service, the endpoint host and a short cause
code -- never a request or answer body (both hold secrets).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx

from agent_vault.errors import AgentVaultError, CredentialUnavailable
from agent_vault.hostpath import InvalidHost, normalize_host
from agent_vault.proxy.ssrf import Egress

MAX_ANSWER = 64 * 1024
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def ssl_context(upstream_ca: Path | None) -> ssl.SSLContext:
    """Verification as for upstreams: certifi roots, the system bundle and `--upstream-ca`."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    if _SYSTEM_BUNDLE.is_file():
        ctx.load_verify_locations(cafile=str(_SYSTEM_BUNDLE))
    if upstream_ca is not None:
        ctx.load_verify_locations(cafile=str(upstream_ca))
    return ctx


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer of at most MAX_ANSWER bytes. Danger: `body` may hold tokens."""

    status: int
    body: bytes

    def __repr__(self) -> str:
        return f"Answer(status={self.status}, bytes={len(self.body)})"


def unavailable(service: str, host: str, cause: str, what: str = "an access token") -> CredentialUnavailable:
    return CredentialUnavailable(
        f"could not get {what} for service {service} from {host}: {cause}",
        hint=f"The credential endpoint of service {service} ({host}) failed with {cause}; the request was "
        "not sent. Check the endpoint and the service's credentials, then retry.",
        service=service,
        endpoint=host,
        cause=cause,
    )


def host_header(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 443 else f"{shown}:{port}"


class TokenFetch:
    """Posts forms to credential endpoints. One per proxy; `aclose()` at shutdown."""

    def __init__(self, egress: Egress, upstream_ca: Path | None) -> None:
        self.egress = egress
        self._ctx = ssl_context(upstream_ca)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._ctx,
                trust_env=False,
                follow_redirects=False,
                timeout=TIMEOUT,
                limits=httpx.Limits(max_keepalive_connections=0, max_connections=64),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, service: str, what: str = "an access token"
    ) -> Answer:
        """POST `body` to `url` (https, validated by the service model). `headers` may include `Host`
        (it must then equal `host_header` of the URL: a signature may cover it)."""
        parts = urlsplit(url)
        try:
            host = normalize_host(parts.hostname or "")
        except InvalidHost:
            raise unavailable(service, "?", "invalid_url", what) from None
        port = parts.port or 443
        try:
            addr = await self.egress.address(host, port)
        except AgentVaultError as e:  # ssrf_blocked / upstream_dns: the endpoint is not reachable
            raise unavailable(service, host, e.code, what) from None
        netloc = (f"[{addr}]" if ":" in addr else addr) + f":{port}"
        target = urlunsplit(("https", netloc, parts.path or "/", parts.query, ""))
        send = {"Host": host_header(host, port), "Accept-Encoding": "identity", **headers}
        try:
            async with self._http().stream(
                "POST", target, content=body, headers=send, extensions={"sni_hostname": host}
            ) as r:
                data = bytearray()
                async for chunk in r.aiter_raw():
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        raise unavailable(service, host, "answer_too_large", what)
                return Answer(r.status_code, bytes(data))
        except httpx.TimeoutException:
            raise unavailable(service, host, "timeout", what) from None
        except httpx.HTTPError as e:
            raise unavailable(service, host, "tls_error" if _tls(e) else "unreachable", what) from None


def _tls(e: BaseException | None) -> bool:
    """True if a TLS failure (certificate, handshake) is somewhere in the exception chain."""
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, ssl.SSLError):
            return True
        e = e.__cause__ or e.__context__
    return False
