"""botocore's SigV4 signer behind one function, imported only when an `aws-sigv4` service signs a
request (botocore adds ~4 MiB and 58 modules to a server that may never use it).

Danger: `keys` hold secrets; nothing here logs or keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from agent_vault.proxy.aws import AwsKeys


class _Signer(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 with a precomputed payload hash; S3 paths are not normalised (as botocore's
    S3SigV4Auth)."""

    def __init__(self, keys: AwsKeys, service: str, region: str, payload_hash: str) -> None:
        super().__init__(Credentials(keys.access_key, keys.secret_key, keys.token), service, region)
        self._payload_hash = payload_hash
        self._s3 = service.startswith("s3")

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash

    def _normalize_url_path(self, path: str) -> str:
        return path if self._s3 else str(super()._normalize_url_path(path))


def signature(
    method: str,
    url: str,
    signed: Mapping[str, str],
    keys: AwsKeys,
    service: str,
    region: str,
    body_hash: str,
) -> Mapping[str, str]:
    """The headers of `signed` plus the signature headers botocore adds (botocore's `HTTPHeaders`:
    lookups ignore case)."""
    req = AWSRequest(method=method, url=url, headers=dict(signed))
    _Signer(keys, service, region, body_hash).add_auth(req)
    headers: Mapping[str, str] = req.headers
    return headers
