"""Accepting an invite in a real headless Chromium: the owner invites through the API, the invitee opens the
printed `invite_url`, chooses a password and lands logged in on the console; the link then works no more.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
from helpers.server import OWNER_PASSWORD, ServerProc
from selenium.webdriver.common.by import By

from .conftest import Console

INVITEE = "invitee@example.com"
INVITEE_PASSWORD = "invitee-password-42"


def _invite(server: ServerProc, email: str) -> str:
    with server.http() as c:
        r = c.post(
            "/v1/users/invites",
            json={
                "password": OWNER_PASSWORD,
                "email": email,
                "role": "member",
                "vaults": [{"vault": "default"}],
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["invite_url"])


def _submit(console: Console, password: str, again: str | None = None) -> None:
    console.css("#invite-password").send_keys(password)
    console.css("#invite-password2").send_keys(password if again is None else again)
    console.css("#invite-submit").click()


def test_accept_an_invite_then_the_link_is_spent(console: Console, console_server: ServerProc) -> None:
    url = _invite(console_server, INVITEE)
    assert url.startswith(console_server.api + "/ui/invite?token=av_inv_")
    token = url.split("token=", 1)[1]
    console.d.get(url)
    console.ready()
    assert urlsplit(console.d.current_url).query == ""  # the token left the address bar at once
    console.shot("invite")
    # the page's own checks: both fields must match, and the API's rule (>= 8 characters)
    _submit(console, INVITEE_PASSWORD, "something-else-1")
    console.wait_text("do not match", "#invite-error")
    assert console.css("#invite-password").get_attribute("value") == ""  # typed passwords are not kept
    _submit(console, "short")
    console.wait_text("at least 8 characters", "#invite-error")
    _submit(console, INVITEE_PASSWORD)
    console.wait_js("location.pathname === '/ui/'")
    console.ready()
    console.wait_text(INVITEE, "#who")  # logged in as the invitee, on the console home
    console.wait_text("default", "#vault-cards")  # with the vault the invite granted
    assert token not in console.dom_and_inputs() and INVITEE_PASSWORD not in console.dom_and_inputs()
    cookie = console.d.get_cookie("av_ui")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(base_url=console_server.api, trust_env=False, timeout=30) as c:
        logins = c.get("/v1/auth/sessions", headers={"Authorization": f"Bearer {cookie['value']}"})
        assert logins.status_code == 200, logins.text
        # one login, made as /ui/login makes it: the accept answer's own login was ended by the page
        assert [x["label"] for x in logins.json()["sessions"]] == ["web console"]

    # the same link, a second time (logged out): a clear error, and the form is gone
    console.d.delete_all_cookies()
    console.d.get(url)
    console.ready()
    _submit(console, "another-password-9")
    error = console.wait_text("invite not found, used or expired", "#invite-error")
    assert "cannot be used" in error.text and "Traceback" not in console.body_text()
    assert not console.d.find_elements(By.CSS_SELECTOR, "#invite-form")
    assert console.css("#invite-login").get_attribute("href").endswith("/ui/login")
    console.d.delete_all_cookies()
    console.login(INVITEE, INVITEE_PASSWORD)  # the password chosen on the page is the one that works


def test_the_page_without_a_token_says_what_to_do(console: Console) -> None:
    console.go("/ui/invite")
    console.ready()
    console.wait_text("invite link exactly as you received it", "#invite-error")
    assert console.d.current_url.endswith("/ui/invite")  # not sent to the login page
