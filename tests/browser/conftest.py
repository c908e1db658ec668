"""Browser fixtures: Debian's headless Chromium driven by Selenium through the system chromedriver.

`console` (module scope) is a real server (`helpers.server.ServerProc`) with a local HTTPS upstream and one
Chromium; `Console` wraps the driver with the few moves the tests make (log in, wait for text, answer the
step-up dialog). `bash .ci/run` installs `chromium` and `chromium-driver`; without them these tests fail
(they are not skipped): the console is part of the product.
Set CONSOLE_SCREENSHOTS=DIR to keep a PNG of every page a test visits (docs/console/ holds a set).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.server import OWNER_EMAIL, OWNER_PASSWORD, ServerProc
from helpers.upstream import TLSUpstream
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 10.0


def _chromedriver() -> str:
    found = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if found is None:
        pytest.fail("chromedriver not found: install Debian's chromium + chromium-driver (bash .ci/run does)")
    return found


class Console:
    """A logged-out Chromium pointed at one server's console."""

    def __init__(self, driver: webdriver.Chrome, server: ServerProc, shots: Path | None) -> None:
        self.d = driver
        self.server = server
        self.shots = shots

    def go(self, path: str) -> None:
        self.d.get(self.server.api + path)
        self.wait_js("document.readyState === 'complete'")

    def wait_js(self, expr: str, timeout: float = WAIT) -> Any:
        return WebDriverWait(self.d, timeout).until(lambda d: d.execute_script("return " + expr))

    def ready(self) -> None:
        """The page's script finished its first render (main[aria-busy=false])."""
        self.wait_js("document.querySelector('main')?.getAttribute('aria-busy') === 'false'")

    def css(self, selector: str, timeout: float = WAIT) -> WebElement:
        return WebDriverWait(self.d, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, selector))

    def wait_text(self, text: str, selector: str = "body", timeout: float = WAIT) -> WebElement:
        def found(d: webdriver.Chrome) -> WebElement | bool:
            try:
                for e in d.find_elements(By.CSS_SELECTOR, selector):
                    if text in e.text:
                        return e
            except StaleElementReferenceException:  # the page re-rendered meanwhile: look again
                pass
            return False

        try:
            return WebDriverWait(self.d, timeout).until(found)  # type: ignore[no-any-return]
        except TimeoutException:
            raise AssertionError(
                f"{text!r} did not appear in {selector}: {self.body_text()[:2000]}"
            ) from None

    def body_text(self) -> str:
        return str(self.d.find_element(By.TAG_NAME, "body").text)

    def login(self, email: str = OWNER_EMAIL, password: str = OWNER_PASSWORD) -> None:
        self.go("/ui/login")
        self.css("#email").send_keys(email)
        self.css("#password").send_keys(password)
        self.css("#login-submit").click()
        self.wait_js("location.pathname === '/ui/'")
        self.ready()

    def step_up(self, password: str = OWNER_PASSWORD) -> None:
        self.css("dialog.stepup #stepup-password").send_keys(password)
        self.css("#stepup-confirm").click()
        self.wait_js("!document.querySelector('dialog.stepup')")

    def notice(self) -> str:
        self.wait_js("!document.getElementById('notice').hidden")
        return str(self.css("#notice").text)

    def dom_and_inputs(self) -> str:
        """Everything the page holds: its serialized DOM plus the live value of every input."""
        return str(
            self.d.execute_script(
                "return document.documentElement.outerHTML + '\\n' + "
                "[...document.querySelectorAll('input,textarea,select')].map(i => i.value).join('\\n')"
            )
        )

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.d.save_screenshot(str(self.shots / f"{name}.png"))


@pytest.fixture(scope="module")
def upstream_b(upstream_ca: trustme.CA) -> Iterator[TLSUpstream]:
    with TLSUpstream(ca=upstream_ca, http2=False) as up:
        yield up


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Iterator[ServerProc]:
    with ServerProc(tmp_path_factory.mktemp("console"), upstream_ca) as server:
        yield server


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    if Path("/usr/bin/chromium").exists():
        opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(_chromedriver()), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(chrome: webdriver.Chrome, console_server: ServerProc) -> Iterator[Console]:
    chrome.delete_all_cookies()
    chrome.set_window_size(1280, 900)
    shots = os.environ.get("CONSOLE_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
    yield Console(chrome, console_server, Path(shots) if shots else None)
    chrome.delete_all_cookies()
