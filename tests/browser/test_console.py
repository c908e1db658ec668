"""The web console in a real headless Chromium: every page a newcomer needs, driven like a person would.

Each test asserts something a user sees (a token shown once that works at the proxy, a service added from
the catalog that injects, a proposal approved from the page, a proxied request appearing in the live log
without a reload) and that no page ever holds a credential value.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme
from helpers.env import base_env
from helpers.server import OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from helpers.wait import wait_until
from selenium.webdriver.common.by import By

from .conftest import Console

SECRET = "sk-console-secret-4f1c9b7e2d"
CATALOG_SECRET = "ghp_consoleCatalogSecret81f2"
APPROVED_SECRET = "sk_live_approvedThroughThePage77"


def proxied_get(server: ServerProc, token: str, url: str) -> httpx.Response:
    with httpx.Client(
        proxy=server.proxy_url(token), verify=str(server.ca_bundle), trust_env=False, timeout=20
    ) as c:
        return c.get(url)


def test_login_form_sets_the_cookie_and_guards_every_page(console: Console) -> None:
    console.go("/ui/agents")
    console.wait_js("location.pathname === '/ui/login'")
    assert "next=%2Fui%2Fagents" in console.d.current_url
    console.css("#email").send_keys("owner@example.com")
    console.css("#password").send_keys("wrong-password-0")
    console.css("#login-submit").click()
    console.wait_text("wrong email or password", "#login-error")
    assert console.css("#password").get_attribute("value") == ""  # the typed password is not kept
    console.css("#password").send_keys(OWNER_PASSWORD)
    console.css("#login-submit").click()
    console.wait_js("location.pathname === '/ui/agents'")  # back where the user was going
    cookie = console.d.get_cookie("av_ui")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert console.d.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it
    console.go("/ui/")
    console.ready()
    console.wait_text("default", "#vault-cards")
    console.wait_text("Intact", "#chain-state")
    console.css("#logout").click()
    console.wait_js("location.pathname === '/ui/login'")
    console.go("/ui/")
    console.wait_js("location.pathname === '/ui/login'")


def test_create_an_agent_its_token_is_shown_once_and_works(
    console: Console, console_server: ServerProc, upstream_b: TLSUpstream
) -> None:
    server = console_server
    server.set_credential("CONSOLE_TOKEN", SECRET)
    server.add_service(
        {
            "name": "console-echo",
            "host": "localhost",
            "port": upstream_b.port,
            "auth": {"type": "bearer", "token": "CONSOLE_TOKEN"},
        }
    )
    console.login()
    console.go("/ui/agents")
    console.ready()
    console.css("#agent-name").send_keys("browser-made")
    console.css("#agent-create-submit").click()
    console.step_up()
    token = console.css("#once-value").text
    assert token.startswith("av_agt_")
    console.shot("agents-token-once")
    r = proxied_get(server, token, upstream_b.url("/echo/made-in-the-browser", host="localhost"))
    assert r.status_code == 200 and SECRET not in r.text  # the echoed header comes back redacted
    seen = [x for x in upstream_b.requests_seen.snapshot() if x["path"] == "/echo/made-in-the-browser"]
    headers = {k.lower(): v for k, v in seen[-1]["headers"]}
    assert headers["authorization"] == f"Bearer {SECRET}"  # injected upstream
    console.css("#once-done").click()
    console.wait_js("!document.getElementById('once-value')")
    assert token not in console.dom_and_inputs()
    console.go("/ui/agents")
    console.ready()
    console.wait_text("browser-made", "#agents-list")
    assert token not in console.dom_and_inputs()  # shown once: never again


def test_add_a_service_from_the_catalog_with_its_value(console: Console, console_server: ServerProc) -> None:
    console.login()
    console.go("/ui/vaults/default/services")
    console.ready()
    form = console.css("form[data-template='github']")
    name = form.find_element(By.CSS_SELECTOR, "input[aria-label='Service name']")
    name.clear()
    name.send_keys("github-from-ui")
    value = form.find_element(By.CSS_SELECTOR, "input[type='password']")
    value.send_keys(CATALOG_SECRET)
    form.find_element(By.CSS_SELECTOR, "button[type='submit']").click()
    console.step_up()
    console.wait_text("github-from-ui", "#services-list")
    assert CATALOG_SECRET not in console.dom_and_inputs()
    console.shot("services")
    with console_server.http() as c:
        svc = c.get("/v1/vaults/default/services/github-from-ui").json()
        assert svc["host"] == "api.github.com" and svc["auth"] == {"type": "bearer", "token": "GITHUB_TOKEN"}
        creds = {x["key"]: x for x in c.get("/v1/vaults/default/credentials").json()["credentials"]}
        assert creds["GITHUB_TOKEN"]["has_value"]
    # disable it from the page (step-up), and the API agrees
    row = console.css("tr[data-service='github-from-ui']")
    row.find_element(By.CSS_SELECTOR, "button[data-action='toggle']").click()
    console.step_up()
    console.wait_text("disabled", "tr[data-service='github-from-ui']")
    with console_server.http() as c:
        assert c.get("/v1/vaults/default/services/github-from-ui").json()["enabled"] is False


def test_credentials_page_is_write_only(console: Console, console_server: ServerProc) -> None:
    console.login()
    console.go("/ui/vaults/default/credentials")
    console.ready()
    console.css("#cred-key").send_keys("UI_WRITTEN_KEY")
    console.css("#cred-value").send_keys("ui-written-value-19fe")
    console.css("#credential-form button[type='submit']").click()
    console.wait_text("UI_WRITTEN_KEY", "#credentials-list")
    assert console.css("#cred-value").get_attribute("value") == ""
    console.shot("credentials")
    with console_server.http() as c:
        r = c.post("/v1/vaults/default/credentials/UI_WRITTEN_KEY/reveal", json={"password": OWNER_PASSWORD})
        assert r.status_code == 200 and r.json()["value"] == "ui-written-value-19fe"
    assert "ui-written-value-19fe" not in console.dom_and_inputs()


def test_approve_a_proposal_from_the_page(console: Console, console_server: ServerProc) -> None:
    server = console_server
    agent = server.make_agent("proposer", role="member")
    with httpx.Client(
        base_url=server.api, headers={"Authorization": f"Bearer {agent}"}, trust_env=False
    ) as c:
        r = c.post(
            "/v1/proposals",
            json={
                "message": "I need Stripe <b>read</b> access",
                "services": [
                    {
                        "action": "set",
                        "name": "stripe-ro",
                        "host": "api.stripe.com",
                        "auth": {"type": "bearer", "token": "STRIPE_RO_KEY"},
                    }
                ],
                "credentials": [{"action": "set", "key": "STRIPE_RO_KEY", "description": "restricted key"}],
            },
        )
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
    console.login()
    console.go("/ui/vaults/default/proposals")
    console.ready()
    card = console.wait_text("I need Stripe <b>read</b> access", f"[data-proposal='{pid}']")  # shown as text
    assert not console.d.find_elements(By.CSS_SELECTOR, "[data-proposal] blockquote b")
    assert "stripe-ro" in card.text and "STRIPE_RO_KEY" in card.text and "value needed" in card.text
    console.shot("proposals")
    card.find_element(By.XPATH, ".//button[contains(., 'Review and decide')]").click()
    console.wait_js(f"location.pathname === '/ui/approve/default/{pid}'")
    console.css("#values input[data-key='STRIPE_RO_KEY']").send_keys(APPROVED_SECRET)
    console.css("#stepup").send_keys(OWNER_PASSWORD)
    console.css("#approve-form button[type='submit']").click()
    console.wait_text("Approved and applied", "#result")
    assert APPROVED_SECRET not in console.dom_and_inputs()
    with server.http() as c:
        assert c.get(f"/v1/vaults/default/proposals/{pid}").json()["status"] == "applied"
        assert c.get("/v1/vaults/default/services/stripe-ro").status_code == 200
    console.go("/ui/vaults/default/proposals")
    console.ready()
    console.wait_text("applied", "#past")


def test_live_log_shows_a_new_request_without_a_reload(
    console: Console, console_server: ServerProc, upstream_b: TLSUpstream
) -> None:
    server = console_server
    server.set_credential("LIVE_KEY", "live-secret-value-5521")
    server.add_service(
        {
            "name": "live-echo",
            "host": "127.0.0.1",
            "port": upstream_b.port,
            "auth": {"type": "bearer", "token": "LIVE_KEY"},
        }
    )
    token = server.make_agent("live-agent")
    console.login()
    console.go("/ui/vaults/default/logs")
    console.ready()
    console.d.execute_script("window.__sameDocument = 'yes'")
    path = "/echo/live-log-probe"
    r = proxied_get(server, token, upstream_b.url(path))
    assert r.status_code == 200
    row = console.wait_text(path, "#log-rows tr", timeout=5)
    assert "live-agent" in row.text and "injected" in row.text and "200" in row.text
    assert console.d.execute_script("return window.__sameDocument") == "yes"  # no reload happened
    row.click()
    detail = console.wait_text("LIVE_KEY", "#detail")  # key names, never values
    assert "live-echo" in detail.text
    console.shot("logs")
    # the host filter keeps only matching rows
    console.css("#f-host").send_keys("no-such-host.example")
    console.css("#filters button[type='submit']").click()
    wait_until(
        lambda: not console.d.find_elements(By.CSS_SELECTOR, "#log-rows tr"), "rows filtered", timeout=5
    )
    assert "live-secret-value-5521" not in console.dom_and_inputs()


def test_no_page_holds_a_credential_value(console: Console, console_server: ServerProc) -> None:
    server = console_server
    server.set_credential("SWEEP_KEY", SECRET + "-sweep")
    secrets = [SECRET, CATALOG_SECRET, APPROVED_SECRET, SECRET + "-sweep"]
    console.login()
    for page in (
        "/ui/",
        "/ui/agents",
        "/ui/vaults/default/services",
        "/ui/vaults/default/credentials",
        "/ui/vaults/default/proposals",
        "/ui/vaults/default/logs",
        "/ui/vaults/default/settings",
    ):
        console.go(page)
        console.ready()
        held = console.dom_and_inputs()
        leaked = [s for s in secrets if s in held]
        assert leaked == [], (page, leaked)
        if page.endswith("settings"):
            console.shot("settings")
        if page == "/ui/":
            console.wait_text("Intact", "#chain-state")
            console.shot("dashboard")


@pytest.mark.parametrize("width,height", [(390, 844)])
def test_pages_fit_a_phone(console: Console, width: int, height: int) -> None:
    console.login()
    console.d.set_window_size(width, height)
    for page in ("/ui/", "/ui/agents", "/ui/vaults/default/services", "/ui/vaults/default/logs"):
        console.go(page)
        console.ready()
        overflow = console.d.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, (page, overflow)
    console.shot("phone-dashboard")


def test_the_quickstart_entirely_from_the_browser(
    console: Console, console_server: ServerProc, upstream_ca: trustme.CA, tmp_path: Path
) -> None:
    """After `init` + `server`: credential, service and agent made in the browser; the agent's token then
    drives `vault run -- curl`, which is injected; the request shows up in the live log."""
    with TLSUpstream(ca=upstream_ca, http2=False) as own:  # a port no earlier test made a service for
        _quickstart(console, console_server, own, tmp_path)


def _quickstart(console: Console, server: ServerProc, upstream_b: TLSUpstream, tmp_path: Path) -> None:
    value = "qs-browser-value-0c7d1e"
    console.login()
    console.go("/ui/vaults/default/credentials")
    console.ready()
    console.css("#cred-key").send_keys("QS_TOKEN")
    console.css("#cred-value").send_keys(value)
    console.css("#credential-form button[type='submit']").click()
    console.wait_text("QS_TOKEN", "#credentials-list")
    console.go("/ui/vaults/default/services")
    console.ready()
    for field, text in (("#svc-name", "qs-echo"), ("#svc-host", "localhost"), ("#svc-key", "QS_TOKEN")):
        console.css(field).send_keys(text)
    console.css("#svc-port").send_keys(str(upstream_b.port))
    console.css("#service-form button[type='submit']").click()
    console.step_up()
    console.wait_text("qs-echo", "#services-list")
    console.go("/ui/agents")
    console.ready()
    console.css("#agent-name").send_keys("qs-agent")
    console.css("#agent-create-submit").click()
    console.step_up()
    token = console.css("#once-value").text
    console.css("#once-done").click()
    env = base_env(tmp_path, AGENT_VAULT_TOKEN=token, AGENT_VAULT_ADDR=server.api)
    cp = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent_vault",
            "vault",
            "run",
            "--",
            "curl",
            "-sS",
            "--fail",
            upstream_b.url("/echo/quickstart-from-browser", host="localhost"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert cp.returncode == 0, cp.stderr
    assert value not in cp.stdout and "[REDACTED:QS_TOKEN]" in cp.stdout
    seen = [x for x in upstream_b.requests_seen.snapshot() if x["path"] == "/echo/quickstart-from-browser"]
    assert {k.lower(): v for k, v in seen[-1]["headers"]}["authorization"] == f"Bearer {value}"
    console.go("/ui/vaults/default/logs")
    console.ready()
    console.wait_text("/echo/quickstart-from-browser", "#log-rows tr")
    assert value not in console.dom_and_inputs()


def test_a_held_request_is_approved_from_the_console(
    console: Console, console_server: ServerProc, upstream_ca: trustme.CA
) -> None:
    """A service that requires approval: the agent's request waits; the console lists the hold (method,
    host, path, agent; never a value) and approving it once lets that very request through."""
    server = console_server
    server.set_credential("HOLD_KEY", "held-secret-value-8e21")
    with TLSUpstream(ca=upstream_ca, http2=False) as own:
        server.add_service(
            {
                "name": "held-echo",
                "host": "localhost",
                "port": own.port,
                "approval": {"timeout_seconds": 60},
                "auth": {"type": "bearer", "token": "HOLD_KEY"},
            }
        )
        token = server.make_agent("hold-agent")
        console.login()
        console.go("/ui/vaults/default/proposals")
        console.ready()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                proxied_get, server, token, own.url("/echo/needs-a-human", host="localhost")
            )
            row = console.wait_text("/echo/needs-a-human", "#holds tr", timeout=15)
            assert "hold-agent" in row.text and "GET" in row.text and "held-echo" in row.text
            assert own.requests_seen.paths() == []  # nothing reached the upstream before the decision
            console.shot("holds")
            row.find_element(By.CSS_SELECTOR, "button[data-action='approve-once']").click()
            console.step_up()
            r = pending.result(timeout=30)
        assert r.status_code == 200
        assert own.requests_seen.paths() == ["/echo/needs-a-human"]
        console.wait_text("No request is waiting", "#holds")
        assert "held-secret-value-8e21" not in console.dom_and_inputs()
