"""A local OAuth2 token endpoint (HTTPS, loopback) for the brokered auth types.

`TokenServer(ca=..., client_id=..., client_secret=...)` is a `TLSUpstream` whose `POST /token` answers
the three grants the proxy uses: `client_credentials`, `refresh_token` (the current refresh token
only; with `rotate=True` every answer carries a new one) and RFC 8693 token exchange (the expected
`subject_token`). Client authentication: HTTP Basic (form-encoded pair) or `client_id`/`client_secret`
in the form. Knobs: `expires_in`, `fail_with` (an RFC 6749 `error` code answered with 400),
`delay` (seconds before answering), `override` (an answer sent as is). Counters: `issued` (access
tokens handed out, in order), `grants` (the form of each token request). Other paths: the default
test routes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse, default_routes

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def _json(status: int, obj: Any) -> UpstreamResponse:
    return UpstreamResponse(status, [("content-type", "application/json")], json.dumps(obj).encode())


class TokenServer(TLSUpstream):
    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str = "",
        subject_token: str = "",
        expires_in: int | None = 3600,
        rotate: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token, self.subject_token = refresh_token, subject_token
        self.expires_in, self.rotate = expires_in, rotate
        self.fail_with: str | None = None
        self.override: UpstreamResponse | None = None  # answered as is (hostile endpoint tests)
        self.delay = 0.0
        self.issued: list[str] = []
        self.grants: list[dict[str, str]] = []
        self.refresh_tokens_seen: list[str] = []

    def _client_ok(self, req: UpstreamRequest, form: dict[str, str]) -> bool:
        auth = req.header("authorization") or ""
        if auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            cid, _, secret = raw.partition(":")
            cid, secret = unquote_plus(cid), unquote_plus(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        return (cid, secret) == (self.client_id, self.client_secret)

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        if req.path != "/token":
            return await default_routes(req)
        form = {k: v[0] for k, v in parse_qs(req.body.decode(), keep_blank_values=True).items()}
        self.grants.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        if req.method != "POST":
            return _json(405, {"error": "invalid_request"})
        if self.override is not None:
            return self.override
        if self.fail_with:
            return _json(400, {"error": self.fail_with, "error_description": "configured to fail"})
        if not self._client_ok(req, form):
            return _json(401, {"error": "invalid_client"})
        grant = form.get("grant_type")
        answer: dict[str, Any] = {}
        if grant == "refresh_token":
            self.refresh_tokens_seen.append(form.get("refresh_token", ""))
            if form.get("refresh_token") != self.refresh_token:
                return _json(400, {"error": "invalid_grant"})
            if self.rotate:
                self.refresh_token = "rt-" + secrets.token_urlsafe(16)
                answer["refresh_token"] = self.refresh_token
        elif grant == TOKEN_EXCHANGE:
            if form.get("subject_token") != self.subject_token:
                return _json(400, {"error": "invalid_grant"})
            answer["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
        elif grant != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type"})
        token = f"at-{len(self.issued) + 1}-" + secrets.token_urlsafe(24)
        self.issued.append(token)
        answer.update({"access_token": token, "token_type": "Bearer"})
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return _json(200, answer)
