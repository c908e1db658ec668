"""The web console (SPEC §9.1): page shells under `/ui/` and their static assets under `/ui/assets/`.

A page is an HTML shell holding no data: it names its page and vault, loads `inert.js`, `lib.js` and the
page's own script (each under a per-response CSP nonce) and the stylesheet; the scripts fetch everything
from the JSON API with the `av_ui` cookie, so a page grants nothing by itself. Assets are read once from
`agent_vault/web/` and served from an allowlist (no path from the request ever reaches the filesystem).
The approval page (`/ui/approve/...`) lives in `ui.py`. `/ui/login` and `/ui/invite` (accept an invite:
choose a password, then logged in) are the two pages usable without a login; the invite token stays in
the query string, which this server never logs and `Referrer-Policy: no-referrer` never sends elsewhere.
"""

from __future__ import annotations

import hashlib
import html
import re
import secrets
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from agent_vault.api.ui import security_headers
from agent_vault.errors import NotFound

router = APIRouter(include_in_schema=False)
WEB = Path(__file__).resolve().parent.parent / "web"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
ASSETS: dict[str, bytes] = {p.name: p.read_bytes() for p in sorted(WEB.iterdir()) if p.suffix in _TYPES}
_ETAGS = {name: '"' + hashlib.sha256(data).hexdigest()[:20] + '"' for name, data in ASSETS.items()}
VAULT_SECTIONS = ("services", "credentials", "proposals", "logs", "settings")
_TITLES = {
    "login": "Log in",
    "invite": "Accept invite",
    "dashboard": "Dashboard",
    "agents": "Agents",
    "services": "Services",
    "credentials": "Credentials",
    "proposals": "Proposals",
    "logs": "Live log",
    "settings": "Settings",
}

_SHELL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} - agent-vault</title>
<link rel="stylesheet" href="/ui/assets/console.css?v={css_tag}" nonce="{nonce}">
<script defer src="/ui/assets/inert.js?v={inert_tag}" nonce="{nonce}"></script>
<script defer src="/ui/assets/lib.js?v={lib_tag}" nonce="{nonce}"></script>
<script defer src="/ui/assets/{page}.js?v={page_tag}" nonce="{nonce}"></script>
</head>
<body data-page="{page}" data-vault="{vault}">
<header class="top"><div class="top-inner"><a class="brand" href="/ui/">agent-vault<small>console</small></a>
<nav id="nav" aria-label="Main"></nav><div id="who"></div></div></header>
<main id="app" aria-busy="true"><p id="notice" class="notice" role="status" hidden></p>
<noscript>The agent-vault console needs JavaScript. The CLI does everything the console does.</noscript>
</main></body></html>
"""


def _tag(name: str) -> str:
    return _ETAGS[name].strip('"')[:10]


def shell(page: str, vault: str = "") -> HTMLResponse:
    """The HTML shell of `page` (a key of `_TITLES` with a `<page>.js` asset)."""
    nonce = secrets.token_urlsafe(18)
    body = _SHELL.format(
        title=html.escape(_TITLES[page] + (f" - {vault}" if vault else "")),
        nonce=nonce,
        page=page,
        vault=html.escape(vault),
        css_tag=_tag("console.css"),
        inert_tag=_tag("inert.js"),
        lib_tag=_tag("lib.js"),
        page_tag=_tag(f"{page}.js"),
    )
    headers = security_headers(nonce)
    return HTMLResponse(body, headers=headers)


def _vault_name(vault: str) -> str:
    if not (3 <= len(vault) <= 64 and _NAME.fullmatch(vault)):
        raise NotFound("no such page")
    return vault


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/", response_class=HTMLResponse)
def dashboard_page() -> HTMLResponse:
    return shell("dashboard")


@router.get("/ui/login", response_class=HTMLResponse)
def login_page() -> HTMLResponse:
    return shell("login")


@router.get("/ui/invite", response_class=HTMLResponse)
def invite_page() -> HTMLResponse:
    """The invite link's page (`?token=av_inv_…`): the shell never echoes the token; `invite.js` reads it."""
    return shell("invite")


@router.get("/ui/agents", response_class=HTMLResponse)
def agents_page() -> HTMLResponse:
    return shell("agents")


@router.get("/ui/vaults/{vault}", response_class=RedirectResponse)
def vault_page(vault: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/vaults/{_vault_name(vault)}/services", status_code=307)


@router.get("/ui/vaults/{vault}/{section}", response_class=HTMLResponse)
def vault_section_page(vault: str, section: str) -> Response:
    if section == "holds":  # held requests are listed on the proposals page (notification links)
        return RedirectResponse(f"/ui/vaults/{_vault_name(vault)}/proposals#holds", status_code=307)
    if section not in VAULT_SECTIONS:
        raise NotFound("no such page", hint="Pages: " + ", ".join(VAULT_SECTIONS) + ".")
    return shell(section, _vault_name(vault))


@router.get("/ui/assets/{name}")
def asset(name: str, request: Request) -> Response:
    """A console script or stylesheet; cached by the browser, revalidated by ETag."""
    data = ASSETS.get(name)
    if data is None:
        raise NotFound("no such asset")
    headers = {
        "ETag": _ETAGS[name],
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if request.headers.get("if-none-match") == _ETAGS[name]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=_TYPES[Path(name).suffix], headers=headers)
