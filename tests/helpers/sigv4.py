"""A local AWS-like HTTPS upstream that VERIFIES SigV4 signatures, and a TLS front for moto's STS.

`SigV4Upstream(ca=..., keys={ACCESS_KEY: (SECRET, SESSION_TOKEN_or_None)})`: every request must carry
`Authorization: AWS4-HMAC-SHA256 ...`; the signature is recomputed with botocore (its own
`SigV4Auth`/`S3SigV4Auth` canonical request over the headers named in `SignedHeaders`, the path and
query as received, and the payload hash: `X-Amz-Content-SHA256` if present -- which must then equal
the body's SHA-256 unless it is `UNSIGNED-PAYLOAD`/`STREAMING-UNSIGNED-PAYLOAD-TRAILER` -- else the
body's hash) with the real secret and compared. 200 JSON `{"verified": true, "access_key", "service",
"region", "signed_headers", "security_token", "body_length", "payload"}` (a PUT: empty, as S3) or
403 JSON `{"error": why}`.
`results` lists `(target, facts_or_reason)` per request.

`StsFront(ca=..., moto_url=..., register=upstream)`: HTTPS in front of a plain-HTTP moto server; it
forwards each request and registers the temporary keys of every AssumeRole answer with `register`.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import httpx
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from helpers.upstream import TLSUpstream, UpstreamRequest, UpstreamResponse

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)
_UNSIGNED = ("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER")


def _json(status: int, obj: Any) -> UpstreamResponse:
    return UpstreamResponse(status, [("content-type", "application/json")], json.dumps(obj).encode())


def verify(req: UpstreamRequest, keys: dict[str, tuple[str, str | None]]) -> dict[str, Any] | str:
    """The verified facts of a request, or why it fails."""
    m = _AUTH.match(req.header("authorization") or "")
    if m is None:
        return "no or malformed AWS4-HMAC-SHA256 Authorization"
    access, _date, region, service, signed, signature = m.groups()
    if access not in keys:
        return "unknown access key"
    secret, token = keys[access]
    if token is not None and req.header("x-amz-security-token") != token:
        return "wrong or missing security token"
    headers: dict[str, str] = {}
    for name in signed.split(";"):
        value = req.authority if name == "host" else req.header(name)
        if value is None:
            return f"signed header {name} missing"
        headers[name] = value
    declared = req.header("x-amz-content-sha256")
    if (
        declared is not None
        and declared not in _UNSIGNED
        and declared != hashlib.sha256(req.body).hexdigest()
    ):
        return "payload hash mismatch"
    areq = AWSRequest(
        method=req.method, url=f"https://{headers['host']}{req.target}", headers=headers, data=req.body
    )
    areq.context["timestamp"] = req.header("x-amz-date") or ""
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = cls(Credentials(access, secret, token), service, region)
    expected = signer.signature(signer.string_to_sign(areq, signer.canonical_request(areq)), areq)
    if expected != signature:
        return "signature mismatch"
    return {
        "verified": True,
        "access_key": access,
        "service": service,
        "region": region,
        "signed_headers": signed.split(";"),
        "security_token": req.header("x-amz-security-token"),
        "body_length": len(req.body),
        "payload": declared,
    }


class SigV4Upstream(TLSUpstream):
    def __init__(self, *, keys: dict[str, tuple[str, str | None]], **kw: Any) -> None:
        super().__init__(**kw)
        self.keys = dict(keys)
        self.results: list[tuple[str, Any]] = []

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        res = verify(req, self.keys)
        self.results.append((req.target, res))
        if isinstance(res, str):
            return _json(403, {"error": res})
        if req.method == "PUT":  # as S3 answers PutObject (botocore reads an S3 body as XML)
            return UpstreamResponse(200, [("etag", '"0"')], b"")
        return _json(200, res)


class StsFront(TLSUpstream):
    def __init__(self, *, moto_url: str, register: SigV4Upstream, **kw: Any) -> None:
        super().__init__(**kw)
        self.moto_url, self.register = moto_url, register
        self.calls = 0

    async def handle(self, req: UpstreamRequest) -> UpstreamResponse:
        self.calls += 1
        headers = {k: v for k, v in req.headers if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient(trust_env=False) as c:
            r = await c.request(req.method, self.moto_url + req.target, content=req.body, headers=headers)
        if r.status_code == 200 and b"AssumeRoleResult" in r.content:
            found = {e.tag.rsplit("}", 1)[-1]: e.text for e in ET.fromstring(r.content).iter()}
            self.register.keys[str(found["AccessKeyId"])] = (
                str(found["SecretAccessKey"]),
                found["SessionToken"],
            )
        return UpstreamResponse(
            r.status_code, [("content-type", r.headers.get("content-type", "text/xml"))], r.content
        )
