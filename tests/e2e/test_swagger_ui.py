"""Swagger UI in a real Chromium against the real server, with the network cut off.

Every request the page makes goes through a route that lets only the server's own
origin through and records anything else: none may be attempted, which proves the
docs load no asset from a CDN (DESIGN.md: "served with their assets from the app
itself"). Then a developer's first steps: Authorize with the password flow, or with
the authorization code flow and PKCE (the login page in Swagger UI's popup, back
through our oauth2-redirect.html, for the dev client `make run` makes), try
GET /users/me, see their own account.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.conftest import LiveServer, OAuthClient, User, free_port

SCREENSHOT = Path("/tmp/swagger-e2e.png")  # noqa: S108 (a fixed, documented place to look)

require_chromium()

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Locator, Page, Route, expect, sync_playwright  # noqa: E402

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
    # --first-party --grant password --grant refresh_token --scope "openid profile email account"`.
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
    password_flow = flow_section(page, "password")
    password_flow.locator("#oauth_username").fill(user.email)
    password_flow.locator("#oauth_password").fill(user.password)
    # Authorization header
    expect(password_flow.locator("#password_type")).to_have_value("basic")
    password_flow.locator("#client_id_password").fill(client.client_id)
    assert client.client_secret
    password_flow.locator("#client_secret_password").fill(client.client_secret)
    password_flow.locator(".auth-btn-wrapper button.authorize").click()
    # Swagger UI shows the Logout button once the token request succeeded.
    expect(password_flow.locator(".auth-btn-wrapper button.authorize",
                                 has_text="Logout")).to_be_visible()
    expect(dialog.locator(".errors")).to_have_count(0)
    dialog.locator(".auth-btn-wrapper button.btn-done").first.click()
    expect(dialog).to_have_count(0)
    try_users_me(page, user)


def flow_section(page: Page, flow: str) -> Locator:
    """The Authorize dialog's form of one OAuth 2 flow (password, authorizationCode)."""
    return page.locator(".swagger-ui .modal-ux .auth-container").filter(
        has=page.locator("h4", has_text=f"(OAuth2, {flow}"))


def try_users_me(page: Page, user: User) -> None:
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


def test_swagger_ui_authorize_with_the_code_flow_and_pkce_offline(
    live_sqlite: LiveServer, page: tuple[Page, list[str]]
) -> None:
    """The dev client of `make run` (`provider clients ensure-dev`, which registers
    ISSUER/docs/oauth2-redirect.html): Authorize opens our login page in a popup, the
    code comes back through our oauth2-redirect.html, Swagger UI redeems it with PKCE."""
    browser_page, blocked = page
    user, _ = live_sqlite.create_account(client_name="unused")
    out = live_sqlite.cli("clients", "ensure-dev").stdout
    found = re.search(r"client_id:\s+(\S+)\n\s+client_secret:\s+(\S+)", out)
    assert found is not None, out
    assert f"redirect_uri:  {live_sqlite.issuer}/docs/oauth2-redirect.html" in out
    dev = OAuthClient(found.group(1), found.group(2))
    try:
        drive_code_flow(browser_page, live_sqlite, user, dev)
    except BaseException:
        browser_page.screenshot(path=str(SCREENSHOT), full_page=True)
        raise
    assert blocked == [], f"the docs tried to reach other origins: {blocked}"


def drive_code_flow(page: Page, live: LiveServer, user: User, client: OAuthClient) -> None:
    page.goto(f"{live.base_url}/docs")
    page.locator(".swagger-ui .auth-wrapper button.authorize").click()
    code_flow = flow_section(page, "authorizationCode with PKCE")
    expect(code_flow).to_be_visible()
    code_flow.locator("#client_id_authorizationCode").fill(client.client_id)
    assert client.client_secret
    code_flow.locator("#client_secret_authorizationCode").fill(client.client_secret)
    for scope in ("openid", "profile", "email", "account"):
        # (The checkbox itself is hidden behind its styled label.)
        code_flow.locator(f"label[for='{scope}-authorizationCode-checkbox-OAuth2']").click()
        expect(code_flow.locator(f"input[data-value='{scope}']")).to_be_checked()
    with page.expect_popup() as popup_info:
        code_flow.locator(".auth-btn-wrapper button.authorize").click()
    popup = popup_info.value
    popup.set_default_timeout(TIMEOUT_MS)
    # Our login page, in Swagger UI's popup; the request carries PKCE (S256).
    expect(popup.locator("h1")).to_have_text("Sign in")
    assert "code_challenge_method=S256" in popup.url
    popup.fill("#username", user.email)
    popup.fill("#password", user.password)
    popup.click("button[type=submit]")
    # oauth2-redirect.html hands the code to the docs window and closes the popup; Swagger
    # UI redeems it (with the verifier) and shows Logout.
    # (No wait for the popup's "close" event: it may close before a wait could begin.)
    expect(code_flow.locator(".auth-btn-wrapper button.authorize",
                             has_text="Logout")).to_be_visible()
    assert popup.is_closed()
    expect(page.locator(".swagger-ui .modal-ux .errors")).to_have_count(0)
    page.locator(".swagger-ui .modal-ux .auth-btn-wrapper button.btn-done").first.click()
    try_users_me(page, user)
