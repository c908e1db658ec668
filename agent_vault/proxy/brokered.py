"""Brokered credentials on the request path (issue #16): OAuth2 access tokens and AWS SigV4.

`Broker.prepare` runs in `requestheaders` after the decision (await: a token fetch never blocks the
loop) and fills the request's `Injection`: an OAuth2 service gets `Authorization: Bearer <token>`
injected like any bearer credential (redacted from responses, scrubbed from the flow, audited by
the keys it was made from); an AWS service gets its keys, and the request is signed once its body
is known: at once when it is empty or travels as `UNSIGNED-PAYLOAD`, else in the `request` hook
over the buffered body (`sign_buffered`).

Body limit for SigV4: the body must be complete to hash it, so a request to be signed is read whole on
both paths (`request_phase` marks it `BufferWhole`: never streamed, whatever its framing), at most
min(--max-buffered-bytes, 1 MiB); larger bodies are signed `UNSIGNED-PAYLOAD` where the service accepts
it (S3), otherwise refused with 413 `body_too_large`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from mitmproxy import http
from mitmproxy.net.http import url

from agent_vault.authtypes import AwsSigV4Auth, OAuth2Auth
from agent_vault.core import Core
from agent_vault.domain.rotation import store_rotated
from agent_vault.errors import BadRequest, BodyTooLarge
from agent_vault.proxy import aws
from agent_vault.proxy.inject import Injection
from agent_vault.proxy.oauth2 import OAuth2Tokens
from agent_vault.proxy.ssrf import Egress
from agent_vault.proxy.tokenfetch import TokenFetch
from agent_vault.servicedef import ServiceDef
from agent_vault.snapshot import VaultView

log = logging.getLogger("agent_vault.proxy")
SIGN_BUFFER = 1 << 20  # the engine's stream_large_bodies (runner.py): larger bodies never buffer
_OAUTH2 = (
    "oauth2-client-credentials",
    "oauth2-refresh-token",
    "token-exchange",
)


@dataclass(slots=True)
class PendingSign:
    """An AWS request waiting for its body to be signed. Danger: holds the keys."""

    keys: aws.AwsKeys = field(repr=False)
    auth: AwsSigV4Auth
    inj: Injection = field(repr=False)
    url: str = ""
    host: str = ""


class Broker:
    """OAuth2 tokens and AWS keys for the proxy (one per addon)."""

    def __init__(self, core: Core, egress: Egress) -> None:
        self.core = core
        self.fetch = TokenFetch(egress, core.settings.upstream_ca)
        self.oauth = OAuth2Tokens(self.fetch, self._store_back, self._is_dynamic)
        self.aws = aws.AwsCredentials(self.fetch)

    def _is_dynamic(self, vault: str, key: str) -> bool:
        """Whether `key` of `vault` comes from a command or file source (the live snapshot's view)."""
        view = self.core.runtime.snapshot.vaults.get(vault)
        return view is not None and key in view.sources

    async def _store_back(self, vault: str, service: str, key: str, value: str) -> None:
        await asyncio.to_thread(store_rotated, self.core, vault, key, value, service=service)

    async def prepare(self, view: VaultView, svc: ServiceDef, inj: Injection) -> PendingSign | None:
        """Fill `inj` for a brokered service; an AWS service returns its pending signature."""
        auth = svc.auth
        if auth.type in _OAUTH2:
            assert isinstance(auth, OAuth2Auth)
            token = await self.oauth.access_token(view.name, svc.name, auth, view.values)
            inj.headers["Authorization"] = "Bearer " + token
            inj.used_keys[:] = auth.referenced_keys()
            inj.add_secret(f"{svc.name}:access_token", token)
            return None
        if isinstance(auth, AwsSigV4Auth):
            keys = await self.aws.keys(view.name, svc.name, auth, view.values)
            inj.used_keys[:] = auth.referenced_keys()
            inj.secrets.extend(keys.secrets(f"{svc.name}:aws"))
            return PendingSign(keys, auth, inj)
        return None

    def plan(self, flow: http.HTTPFlow, pending: PendingSign, host: str, port: int, clen: int | None) -> bool:
        """Sign now if the body is empty or too large to buffer (UNSIGNED-PAYLOAD where allowed, else
        413); returns True when the body must be buffered and signed by `sign_buffered`."""
        req = flow.request
        pending.host = url.hostport(req.scheme, host, port)
        pending.url = f"{req.scheme}://{pending.host}{req.path}"
        limit = min(self.core.settings.max_buffered_bytes, SIGN_BUFFER)
        chunked = "chunked" in req.headers.get("transfer-encoding", "").lower()
        empty = clen == 0 or (clen is None and req.http_version.startswith("HTTP/1") and not chunked)
        too_big = bool(req.stream) or (clen is not None and clen > limit)
        declared = req.headers.get("x-amz-content-sha256", "")
        if declared.startswith("STREAMING-AWS4-HMAC-SHA256"):  # chunk signatures: cannot be re-signed
            raise BadRequest(
                "chunk-signed (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) uploads cannot be re-signed by the proxy",
                hint="Use HTTPS with unsigned payloads (the AWS SDKs' default over HTTPS).",
            )
        if pending.auth.unsigned_payload_allowed and declared in aws.CLIENT_UNSIGNED:
            self._sign(req, pending, declared)  # the SDK chose it (e.g. aws-chunked with a trailer)
            return False
        if empty:
            self._sign(req, pending, aws.payload_hash(b""))
            return False
        if too_big or (clen is None and pending.auth.unsigned_payload_allowed):  # S3: never streams unsigned
            if not pending.auth.unsigned_payload_allowed:
                raise BodyTooLarge(
                    f"the body is too large to sign for AWS service {pending.auth.service}",
                    limit_bytes=limit,
                )
            self._sign(req, pending, aws.UNSIGNED_PAYLOAD)
            return False
        for name in [k for k in req.headers if k.lower() in ("authorization", "x-amz-security-token")]:
            del req.headers[name]  # never forward the agent's placeholder signature
        return True

    def sign_buffered(self, flow: http.HTTPFlow, pending: PendingSign) -> None:
        """Sign over the complete (substituted) body, in the `request` hook."""
        req = flow.request
        body = req.raw_content
        if body is None:  # cannot happen (the body is read whole, see the module docstring): fail closed
            raise BodyTooLarge(
                f"the body is too large to sign for AWS service {pending.auth.service}",
                limit_bytes=min(self.core.settings.max_buffered_bytes, SIGN_BUFFER),
            )
        limit = min(self.core.settings.max_buffered_bytes, SIGN_BUFFER)
        if len(body) > limit:
            raise BodyTooLarge(
                f"the body is too large to sign for AWS service {pending.auth.service}", limit_bytes=limit
            )
        self._sign(req, pending, aws.payload_hash(body))

    def _sign(self, req: http.Request, pending: PendingSign, body_hash: str) -> None:
        names = aws.sign(
            req.headers,
            req.method,
            pending.url,
            pending.host,
            body_hash,
            pending.keys,
            pending.auth.service,
            pending.auth.region,
        )
        for name in names:  # the addon scrubs these from the flow when it ends
            pending.inj.headers.setdefault(name, "")
