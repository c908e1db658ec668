"""The control-API rate limiter (SPEC §5.10): per token digest, or per client IP without a token.

Profiles follow the server's `--rate-limits`: `default` 20/s burst 200, `strict` 10/s burst 50, `off`
none. `/health` and `/ready` are exempt (probes). Login and step-up failures have their own
per-account limiter (domain), which `off` does not disable. The limiter lives in `core.services`, so
each server (and each test core) has its own buckets; it runs on the event loop only.
"""

from __future__ import annotations

from starlette.requests import Request

from agent_vault import crypto
from agent_vault.api.deps import bearer_token
from agent_vault.core import Core
from agent_vault.errors import AgentVaultError, RateLimited
from agent_vault.ratelimit import TokenBucket

API_PROFILES = {"default": (20.0, 200.0), "strict": (10.0, 50.0)}
EXEMPT = frozenset({"/health", "/ready"})


def _bucket(core: Core) -> TokenBucket | None:
    svc = core.services
    if not svc.api_limiter_made:  # made on first use: `off` keeps None
        rate_burst = API_PROFILES.get(core.settings.rate_limits)
        svc.api_limiter = TokenBucket(*rate_burst) if rate_burst else None
        svc.api_limiter_made = True
    return svc.api_limiter


def check(core: Core, request: Request) -> AgentVaultError | None:
    """The 429 to answer with, or None when the request may go on."""
    if request.url.path in EXEMPT:
        return None
    bucket = _bucket(core)
    if bucket is None:
        return None
    token = bearer_token(request)
    key = f"t:{crypto.digest(token)}" if token else f"ip:{request.client.host if request.client else '?'}"
    wait = bucket.take(key)
    if not wait:
        return None
    metrics = core.services.metrics
    if metrics is not None:
        metrics.child(metrics.rate_limited, "control_api").inc()
    return RateLimited(
        "too many control API requests", retry_after=max(1, round(wait + 0.5)), limiter="control_api"
    )
