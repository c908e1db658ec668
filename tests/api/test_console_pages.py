"""The console's page shells and assets (SPEC §9.1): locked-down headers, a fresh nonce on every script and
stylesheet, assets from an allowlist only, and scripts that never turn API text into HTML.

What the pages do is tested in a real Chromium (tests/browser/); this checks the contract of what is served.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest
from helpers.core import OWNER_PASSWORD

from agent_vault.api.console import ASSETS, VAULT_SECTIONS

PAGES = [
    "/ui/",
    "/ui/login",
    "/ui/invite",
    "/ui/agents",
    *(f"/ui/vaults/default/{s}" for s in VAULT_SECTIONS),
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_a_locked_down_shell(api: httpx.Client, path: str) -> None:
    r = api.get(path, headers={"Authorization": ""})  # a shell needs no login: it holds no data
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp)
    assert nonce is not None
    for directive in (
        "default-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "connect-src 'self'",
        f"style-src 'nonce-{nonce.group(1)}'",
    ):
        assert directive in csp, directive
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    tags = re.findall(r"<(script|link)\b[^>]*>", page)
    assert len(tags) == 4  # inert.js, lib.js, the page's script, the stylesheet
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", page):
        assert f'nonce="{nonce.group(1)}"' in tag, tag
        assert re.search(r'(?:src|href)="/ui/assets/[a-z]+\.(?:js|css)\?v=[0-9a-f]+"', tag), tag
    assert "http://" not in page and "https://" not in page  # no external asset
    assert not re.search(r"\son[a-z]+=", page)  # no inline handlers
    assert api.get(path).headers["content-security-policy"] != csp  # a fresh nonce each time


def test_the_invite_page_never_echoes_its_token(api: httpx.Client) -> None:
    """The invite link (`invite_url` of POST /v1/users/invites) opens the console's invite page; the token
    stays in the query string for `invite.js`: never in the page, never sent on as a Referer, never cached."""
    url = api.post(
        "/v1/users/invites",
        json={"password": OWNER_PASSWORD, "email": "page@example.com", "role": "member", "vaults": []},
    ).json()["invite_url"]
    parts = urlsplit(url)
    assert parts.path == "/ui/invite" and parts.query.startswith("token=av_inv_")
    token = parts.query.removeprefix("token=")
    api.cookies.clear()
    r = api.get(f"{parts.path}?{parts.query}", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert token not in r.text and 'data-page="invite"' in r.text
    assert re.search(r'src="/ui/assets/invite\.js\?v=[0-9a-f]+"', r.text)
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
    assert "connect-src 'self'" in r.headers["content-security-policy"]


def test_pages_reject_unknown_sections_and_bad_vault_names(api: httpx.Client) -> None:
    assert api.get("/ui/vaults/default/secrets").status_code == 404
    assert api.get("/ui/vaults/Bad..Name/services").status_code == 404
    assert api.get("/ui/vaults/a/services").status_code == 404
    r = api.get("/ui/vaults/default", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/vaults/default/services"
    assert api.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    holds = api.get("/ui/vaults/default/holds", follow_redirects=False)  # the link in hold notifications
    assert holds.status_code == 307 and holds.headers["location"] == "/ui/vaults/default/proposals#holds"


def test_assets_come_from_an_allowlist(api: httpx.Client) -> None:
    for name in ASSETS:
        r = api.get(f"/ui/assets/{name}")
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"].startswith(
            "text/css" if name.endswith(".css") else "text/javascript"
        )
        again = api.get(f"/ui/assets/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    for bad in ("..%2Fapi%2Fapp.py", "%2e%2e/%2e%2e/pyproject.toml", "lib.js.bak", "app.py", "missing.js"):
        assert api.get(f"/ui/assets/{bad}").status_code == 404, bad


@pytest.mark.parametrize("name", sorted(n for n in ASSETS if n.endswith(".js")))
def test_scripts_never_build_html_from_text(name: str) -> None:
    script = ASSETS[name].decode()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "DOMParser",
        "srcdoc",
        "eval(",
        "new Function",
        "javascript:",
    ):
        assert sink not in script, (name, sink)
    # text reaches the DOM through inert(): textContent is only ever set to a literal or cleared
    for m in re.finditer(r"textContent\s*=\s*([^;]+);", script):
        assert re.fullmatch(r'(?:"[^"]*"|paused \? "[^"]*" : "[^"]*")', m.group(1).strip()), (
            name,
            m.group(0),
        )
    assert "createTextNode(inert(" in ASSETS["lib.js"].decode()
