"""Swagger UI in a real Chromium against the real server, with the network cut off.

Every request the page makes goes through a route that lets only the server's own
origin through and records anything else: none may be attempted, which proves the
docs load no asset from a CDN (DESIGN.md: "served with their assets from the app
itself"). Then a developer's first steps: Authorize with the password flow, try
GET /users/me, see their own account.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import LiveServer, OAuthClient, User, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT = Path("/tmp/swagger-e2e.png")  # noqa: S108 (a fixed, documented place to look)
TIMEOUT_MS = 30_000

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must run the browser tests "
                    "(scripts/ensure-chromium.sh installs it)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, or "
                "scripts/ensure-chromium.sh); the Swagger UI test needs it",
                allow_module_level=True)

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Page, Route, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def page(live_sqlite: LiveServer) -> Iterator[tuple[Page, list[str]]]:
    """A Chromium page that can reach the live server and nothing else."""
    origin = urlsplit(live_sqlite.base_url)
    blocked: list[str] = []

    def only_our_origin(route: Route) -> None:
        url = urlsplit(route.request.url)
        if (url.scheme, url.netloc) == (origin.scheme, origin.netloc):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("blockedbyclient")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1600})
            context.set_default_timeout(TIMEOUT_MS)
            context.route("**/*", only_our_origin)
            page = context.new_page()
            # The guard works: another origin, even on loopback, is refused and recorded.
            elsewhere = f"http://127.0.0.1:{free_port()}/elsewhere.js"
            with pytest.raises(PlaywrightError, match="ERR_BLOCKED_BY_CLIENT"):
                page.goto(elsewhere)
            assert blocked == [elsewhere]
            blocked.clear()
            try:
                yield page, blocked
            finally:
                context.close()
        finally:
            browser.close()


def test_swagger_ui_authorize_and_try_users_me_offline(
    live_sqlite: LiveServer, page: tuple[Page, list[str]]
) -> None:
    browser_page, blocked = page
    # `provider users create ... --verified` and `provider clients create --name swagger
    # --grant password --grant refresh_token --scope "openid profile email"`.
    user, client = live_sqlite.create_account(client_name="swagger")
    try:
        drive_swagger_ui(browser_page, live_sqlite, user, client)
    except BaseException:
        browser_page.screenshot(path=str(SCREENSHOT), full_page=True)
        raise
    assert blocked == [], f"the docs tried to reach other origins: {blocked}"


def drive_swagger_ui(page: Page, live: LiveServer, user: User, client: OAuthClient) -> None:
    page.goto(f"{live.base_url}/docs")
    authorize = page.locator(".swagger-ui .auth-wrapper button.authorize")
    expect(authorize).to_be_visible()

    # The password flow form of the Authorize dialog.
    authorize.click()
    dialog = page.locator(".swagger-ui .modal-ux")
    expect(dialog).to_be_visible()
    dialog.locator("#oauth_username").fill(user.email)
    dialog.locator("#oauth_password").fill(user.password)
    expect(dialog.locator("#password_type")).to_have_value("basic")  # Authorization header
    dialog.locator("[id^='client_id']").fill(client.client_id)
    assert client.client_secret
    dialog.locator("[id^='client_secret']").fill(client.client_secret)
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    # Swagger UI shows the Logout button once the token request succeeded.
    expect(dialog.locator(".auth-btn-wrapper button.authorize", has_text="Logout")).to_be_visible()
    expect(dialog.locator(".errors")).to_have_count(0)
    dialog.locator(".auth-btn-wrapper button.btn-done").click()
    expect(dialog).to_have_count(0)

    # GET /users/me: expand, try it out, execute.
    operation = page.locator(".opblock.opblock-get").filter(
        has=page.locator(".opblock-summary-path[data-path='/users/me']"))
    operation.locator(".opblock-summary").first.click()
    try_it = operation.locator("button.try-out__btn")
    if try_it.count() and try_it.inner_text().strip() == "Try it out":
        try_it.click()
    operation.locator("button.execute").click()

    live_response = operation.locator(".live-responses-table tbody .response")
    expect(live_response.locator(".response-col_status")).to_have_text("200")
    body = live_response.locator(".response-col_description .highlight-code .microlight")
    expect(body).to_contain_text(f'"email": "{user.email}"')
