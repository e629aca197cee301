"""Playwright driving Debian's Chromium (/usr/bin/chromium, installed by `make test`; the
browser download of Playwright is never used) for the dashboard's tests: the ``browser``
fixture (conftest.py offers it to every test) and the steps the tests share.

Set DASHBOARD_SCREENSHOTS=<dir> to save screenshots of the main pages there (docs/dashboard/
holds the committed ones).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

if TYPE_CHECKING:
    from tests.conftest import LiveStack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A loaded machine runs seven suites at once: waits are for events, bounded generously.
WAIT_MS = 90_000
SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright, one per test module (a fixture of conftest.py)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Browser, live: LiveStack, **options: Any) -> Page:
    page = browser.new_context(base_url=live.url, **options).new_page()
    page.set_default_timeout(WAIT_MS)
    return page


def sign_in(browser: Browser, live: LiveStack, token: str) -> Page:
    """A browser page signed in with ``token``, on the models list."""
    page = new_page(browser, live)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/signin\?next=/$"))
    page.fill("#token", token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def run_form(page: Page, model: str) -> None:
    page.goto(f"/models/{model}")
    expect(page.get_by_role("heading", name=model)).to_be_visible()


def submit_run(page: Page) -> str:
    """Press Run; returns the id of the prediction page it leads to."""
    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(r"/predictions/[a-z0-9]+$"))
    return page.url.rsplit("/", 1)[-1]


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def private_model(live: LiveStack, token: str, prefix: str, **fields: Any) -> tuple[str, str]:
    """A new private model of the token's account (``fields`` such as ``hardware``): its
    owner and name."""
    with live.client(token) as api:
        owner: str = api.get("/v1/account").json()["username"]
        name = f"{prefix}-{os.urandom(3).hex()}"
        body = {"owner": owner, "name": name, "visibility": "private", **fields}
        created = api.post("/v1/models", json=body)
        assert created.status_code == 201, created.text
    return owner, name
