"""The CSRF guard of the control API (SPEC §9): one check, applied by the app to every request.

Browsers authenticate with the `av_ui` cookie (HttpOnly, SameSite=Strict). SameSite does not stop a
*same-site* page - any other web server on 127.0.0.1/localhost, another port of this host - from making
the browser send the cookie, and a bodiless `POST` (agent revoke, logout) is a "simple" request that
needs no CORS preflight. So every state-changing request (POST, PUT, PATCH, DELETE) is judged here,
before routing, whatever router serves it - a new router cannot forget it:

* `Authorization: Bearer …` present: the cookie is not used (`deps.bearer_token` prefers the header),
  and a browser page cannot set that header cross-origin without a CORS grant (none is ever given):
  allowed, with or without `Origin` (CLI, agents, scripts).
* `av_ui` cookie present (and no bearer): `Origin` must be one of this server's own origins. A missing
  `Origin` is refused too - every browser sends it on a cookie-carrying write, so its absence means the
  request cannot be vouched for.
* Neither (e.g. `POST /v1/auth/login`, `POST /v1/invites/{token}/accept`): a foreign `Origin` is refused,
  a missing one allowed. Login CSRF - a foreign page logging the browser in to an account the attacker
  controls, so the human later reviews proposals in it - and password guessing driven through a victim's
  browser both need a cross-origin write, which carries a foreign `Origin`; the CLI and scripts send none.

Refusals are the SPEC §6 403 `forbidden` with a hint; nothing past the guard runs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from agent_vault.api.deps import UI_COOKIE, authorization_bearer
from agent_vault.core import Core
from agent_vault.errors import AgentVaultError, Forbidden

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of `url`, lower-cased; "" when it has no scheme or host."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def own_origins(request: Request, core: Core | None) -> set[str]:
    """This server's origins: the public URL, the bound API URL and the request's scheme + Host.

    The Host header is already pinned to the bound address / public host by the app's 421 guard, and a
    browser always sets it to the server it talks to: a foreign page cannot make it match its Origin."""
    host = request.headers.get("host", "")
    own = {f"{request.url.scheme}://{host}".lower() if host else ""}
    if core is not None:
        own |= {origin_of(core.public_url), origin_of(core.api_url)}
    return own - {""}


def refusal(request: Request, core: Core | None) -> AgentVaultError | None:
    """The error to answer instead of running `request`, or None when it may proceed."""
    if request.method.upper() not in WRITE_METHODS or authorization_bearer(request) is not None:
        return None
    raw = request.headers.get("origin")
    origin = raw.strip().rstrip("/").lower() if raw is not None else None
    if UI_COOKIE in request.cookies:
        if not origin:
            return Forbidden(
                "a write authenticated by the av_ui cookie must carry an Origin header",
                hint="Use the web UI served by this server, or send Authorization: Bearer instead.",
            )
    elif origin is None:
        return None
    if origin not in own_origins(request, core):
        return Forbidden(
            "cross-origin request refused",
            hint="Use the web UI served by this server, or send Authorization: Bearer instead.",
        )
    return None
