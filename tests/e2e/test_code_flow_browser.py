"""The authorization code flow in a real headless Chromium against a real server.

Clients and users are made with the real CLI. The clients' redirect URIs point at a
small HTTP server of the test's own on a loopback port (``CallbackServer``), which
records where the browser was sent: that is how the test reads the code. Any other
origin is refused and recorded, so the pages are also shown to load nothing from
elsewhere.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
import pyotp
import pytest

from provider.services import build_services
from tests.conftest import make_settings
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium
from tests.e2e.conftest import LiveServer, OAuthClient, User, free_port
from tests.mfa.helpers import enable_totp
from tests.web.helpers import pkce, query_of

require_chromium()

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Page,
    Route,
    expect,
    sync_playwright,
)

expect.set_options(timeout=TIMEOUT_MS)

SCREENSHOT = Path("/tmp/code-flow-e2e.png")  # noqa: S108 (a fixed place to look)


class CallbackServer:
    """The client's side: records every request (its path and query) and answers with a
    small page (or one set for its path)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.arrived: list[str] = []
        self.pages: dict[str, str] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.arrived.append(owner.origin + self.path)
                body = owner.pages.get(self.path.split("?")[0],
                                       "<!doctype html><h1>client</h1>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CallbackServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def callback_server() -> Iterator[CallbackServer]:
    with CallbackServer() as server:
        yield server


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Session:
    """One browser profile: its context, a page, and what reached the client's origin."""

    def __init__(self, browser: Browser, live: LiveServer, client_side: CallbackServer
                 ) -> None:
        self.live = live
        self.client_side = client_side
        client_side.arrived.clear()
        self.context: BrowserContext = browser.new_context()
        self.context.set_default_timeout(TIMEOUT_MS)
        self.blocked: list[str] = []
        allowed = {urlsplit(live.base_url).netloc, urlsplit(client_side.origin).netloc}
        self.context.route("**/*", self._route(allowed))
        self.page: Page = self.context.new_page()

    @property
    def arrived(self) -> list[str]:
        """URLs of the client's side the browser was sent to."""
        return self.client_side.arrived

    def _route(self, allowed: set[str]) -> Any:
        def handle(route: Route) -> None:
            url = route.request.url
            if urlsplit(url).netloc in allowed:
                route.continue_()
            else:
                self.blocked.append(url)
                route.abort("blockedbyclient")
        return handle

    def close(self) -> None:
        self.context.close()

    def session_cookie(self) -> dict[str, Any] | None:
        cookies = [c for c in self.context.cookies() if c["name"] == "provider_session"]
        return dict(cookies[0]) if cookies else None

    # --- the flow ------------------------------------------------------------------------

    def authorize_url(self, client_id: str, *, redirect_uri: str | None = None,
                      scope: str = "openid profile email", **extra: str) -> dict[str, str]:
        verifier, challenge = pkce()
        redirect_uri = redirect_uri or f"{self.client_side.origin}/callback"
        params = {"response_type": "code", "client_id": client_id,
                  "redirect_uri": redirect_uri, "scope": scope,
                  "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8),
                  "code_challenge": challenge, "code_challenge_method": "S256", **extra}
        return {**params, "verifier": verifier,
                "url": f"{self.live.base_url}/oauth/authorize?{urlencode(params)}"}

    def wait_for_client(self, count: int) -> dict[str, str]:
        """The query of the browser's ``count``-th arrival at the client."""
        self.page.wait_for_url(lambda url: len(self.arrived) >= count, timeout=TIMEOUT_MS)
        expect(self.page.locator("h1")).to_have_text("client")
        return query_of(self.arrived[count - 1])

    def sign_in(self, user: User) -> None:
        page = self.page
        expect(page.locator("h1")).to_have_text("Sign in")
        page.fill("#username", user.email)
        page.fill("#password", user.password)
        page.click("button[type=submit]")


@pytest.fixture
def browser(chromium: Browser, live_sqlite: LiveServer, callback_server: CallbackServer
            ) -> Iterator[Session]:
    session = Session(chromium, live_sqlite, callback_server)
    try:
        yield session
    except BaseException:
        session.page.screenshot(path=str(SCREENSHOT), full_page=True)
        raise
    finally:
        assert session.blocked == [], f"the pages reached other origins: {session.blocked}"
        session.close()


def create_client(browser: Session, *, first_party: bool, name: str = "Example App",
                  public: bool = False) -> OAuthClient:
    """A code-flow client whose redirect URI is the callback server's (a registered
    loopback URI: any port would match, RFC 8252 §7.3)."""
    origin = browser.client_side.origin
    args = ["clients", "create", "--name", name, "--grant", "authorization_code",
            "--grant", "refresh_token", "--scope", "openid profile email",
            "--redirect-uri", f"{origin}/callback",
            "--post-logout-redirect-uri", f"{origin}/bye"]
    if first_party:
        args.append("--first-party")
    if public:
        args.append("--public")
    made = browser.live.cli_json(*args)
    return OAuthClient(made["client_id"], made["client_secret"])


def create_user(live: LiveServer) -> User:
    user, _ = live.create_account()
    return user


def redeem(live: LiveServer, client: OAuthClient, request: dict[str, str], code: str,
           ) -> dict[str, Any]:
    data = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": request["redirect_uri"], "code_verifier": request["verifier"]}
    auth = None
    if client.client_secret is None:
        data["client_id"] = client.client_id
    else:
        auth = (client.client_id, client.client_secret)
    response = httpx.post(f"{live.base_url}/oauth/token", data=data, auth=auth, timeout=30,
                          trust_env=False)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def verified_id_token(live: LiveServer, client: OAuthClient, token: str) -> dict[str, Any]:
    jwks = jwt.PyJWKClient(f"{live.base_url}/.well-known/jwks.json")
    claims: dict[str, Any] = jwt.decode(
        token, jwks.get_signing_key_from_jwt(token), algorithms=["RS256"],
        audience=client.client_id, issuer=live.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                             "at_hash"]})
    return claims


# --- the flows ------------------------------------------------------------------------------


def test_third_party_client_full_flow_with_consent(browser: Session) -> None:
    live = browser.live
    user, app = create_user(live), create_client(browser, first_party=False,
                                                 name="Third-party App")
    request = browser.authorize_url(app.client_id)
    browser.page.goto(request["url"])
    browser.sign_in(user)
    page = browser.page
    expect(page.locator("h1")).to_have_text("Allow access?")
    expect(page.locator("main")).to_contain_text("Third-party App")
    expect(page.locator("ul.scopes")).to_contain_text("See your email address")
    page.click("button[value=allow]")
    answer = browser.wait_for_client(1)
    assert set(answer) == {"code", "state", "iss"}
    assert (answer["state"], answer["iss"]) == (request["state"], live.issuer)
    tokens = redeem(live, app, request, answer["code"])
    claims = verified_id_token(live, app, tokens["id_token"])
    assert claims["sub"] == user.id
    assert claims["nonce"] == request["nonce"]
    assert claims["amr"] == ["pwd"]
    # The session cookie as the browser keeps it.
    cookie = browser.session_cookie()
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["secure"], cookie["path"]) == (
        True, "Lax", False, "/")
    # Remembered consent: the next authorization goes straight back.
    again = browser.authorize_url(app.client_id, scope="openid email")
    browser.page.goto(again["url"])
    assert "code" in browser.wait_for_client(2)


def test_first_party_without_consent_then_sso_and_prompt_login(browser: Session) -> None:
    live = browser.live
    user = create_user(live)
    first = create_client(browser, first_party=True, name="First App")
    second = create_client(browser, first_party=True, name="Second App")
    native = create_client(browser, first_party=True, name="Native App", public=True)
    # The browser arrives with a planted session cookie: it is worthless, and replaced.
    browser.context.add_cookies([{"name": "provider_session", "value": "planted",
                                  "url": live.base_url}])
    request = browser.authorize_url(first.client_id)
    browser.page.goto(request["url"])
    browser.sign_in(user)  # no consent page follows
    first_answer = browser.wait_for_client(1)
    cookie = browser.session_cookie()
    assert cookie is not None and cookie["value"] != "planted"
    first_tokens = redeem(live, first, request, first_answer["code"])
    # Single sign-on into the second app: no page at all.
    sso = browser.authorize_url(second.client_id)
    browser.page.goto(sso["url"])
    second_tokens = redeem(live, second, sso, browser.wait_for_client(2)["code"])
    assert verified_id_token(live, second, second_tokens["id_token"])["auth_time"] == \
        verified_id_token(live, first, first_tokens["id_token"])["auth_time"]
    # A public app on a loopback redirect (RFC 8252 §8.6: any program on the device could
    # stand behind it): no password, but the user confirms, every time, and prompt=none
    # cannot skip that.
    for arrival in (3, 4):
        ask = browser.authorize_url(native.client_id)
        browser.page.goto(ask["url"])
        expect(browser.page.locator("h1")).to_have_text("Allow access?")
        expect(browser.page.locator("main")).to_contain_text("Native App")
        browser.page.click("button[value=allow]")
        native_answer = browser.wait_for_client(arrival)
    assert "refresh_token" in redeem(live, native, ask, native_answer["code"])
    silent = browser.authorize_url(native.client_id, prompt="none")
    browser.page.goto(silent["url"])
    assert browser.wait_for_client(5)["error"] == "consent_required"
    # prompt=login: the password again, and a new session cookie.
    before = browser.session_cookie()
    login = browser.authorize_url(second.client_id, prompt="login")
    browser.page.goto(login["url"])
    browser.sign_in(user)
    assert "code" in browser.wait_for_client(6)
    after = browser.session_cookie()
    assert before is not None and after is not None and after["value"] != before["value"]


def test_prompt_none_without_a_session_goes_back_login_required(browser: Session) -> None:
    live = browser.live
    app = create_client(browser, first_party=True)
    request = browser.authorize_url(app.client_id, prompt="none")
    browser.page.goto(request["url"])
    assert browser.wait_for_client(1) == {
        "error": "login_required", "error_description": "The user is not signed in.",
        "state": request["state"], "iss": live.issuer}


def test_totp_during_login(browser: Session, keys_dir: Path) -> None:
    live = browser.live
    user, app = create_user(live), create_client(browser, first_party=True)
    # (In a thread of its own: sync Playwright runs an event loop in this one.)
    with ThreadPoolExecutor(max_workers=1) as pool:
        secret = pool.submit(asyncio.run, _enable_totp(live, keys_dir, user)).result()
    request = browser.authorize_url(app.client_id)
    browser.page.goto(request["url"])
    browser.sign_in(user)
    page = browser.page
    expect(page.locator("h1")).to_have_text("Two-step verification")
    page.fill("#otp", "000000")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("The code is wrong or was already used.")
    page.fill("#otp", pyotp.TOTP(secret).now())
    page.click("button[type=submit]")
    tokens = redeem(live, app, request, browser.wait_for_client(1)["code"])
    assert verified_id_token(live, app, tokens["id_token"])["amr"] == ["pwd", "otp", "mfa"]


async def _enable_totp(live: LiveServer, keys_dir: Path, user: User) -> str:
    services = build_services(make_settings(live.database_url, keys_dir))
    try:
        secret, _ = await enable_totp(services, user)
        return secret
    finally:
        await services.engine.dispose()


def test_logout_ends_the_session_and_returns_to_the_client(browser: Session) -> None:
    live = browser.live
    user, app = create_user(live), create_client(browser, first_party=True)
    request = browser.authorize_url(app.client_id)
    browser.page.goto(request["url"])
    browser.sign_in(user)
    tokens = redeem(live, app, request, browser.wait_for_client(1)["code"])
    bye = f"{browser.client_side.origin}/bye"
    logout = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": bye,
                        "state": "after-logout"})
    browser.page.goto(f"{live.base_url}/oauth/logout?{logout}")
    browser.wait_for_client(2)
    assert browser.arrived[1] == f"{bye}?state=after-logout"
    assert browser.session_cookie() is None
    refreshed = httpx.post(f"{live.base_url}/oauth/token", trust_env=False, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(app.client_id, app.client_secret or ""))
    assert refreshed.json()["error"] == "invalid_grant"
    # Signed out: prompt=none answers login_required. Without a hint, a confirmation.
    none = browser.authorize_url(app.client_id, prompt="none")
    browser.page.goto(none["url"])
    assert browser.wait_for_client(3)["error"] == "login_required"
    browser.page.goto(f"{live.base_url}/oauth/logout")
    expect(browser.page.locator("h1")).to_have_text("Sign out")
    browser.page.click("button[type=submit]")
    expect(browser.page.locator("h1")).to_have_text("Signed out")


def test_login_page_refuses_to_be_framed(browser: Session) -> None:
    live = browser.live
    app = create_client(browser, first_party=True)
    request = browser.authorize_url(app.client_id)
    browser.client_side.pages["/framer"] = (
        f'<!doctype html><h1>framer</h1><iframe id="f" src="{request["url"]}"></iframe>')
    browser.page.goto(f"{browser.client_side.origin}/framer")
    expect(browser.page.locator("h1")).to_have_text("framer")
    # The frame's navigation is refused: it never shows our login form.
    browser.page.wait_for_timeout(1000)
    frame = browser.page.frame_locator("#f")
    expect(frame.locator("#password")).to_have_count(0)
    for child in browser.page.main_frame.child_frames:
        assert not child.url.startswith(live.base_url) or child.url == "about:blank" \
            or "chrome-error" in child.url
        assert "Sign in" not in child.content()
    # The same URL at the top level shows the form (the test's page is not broken).
    browser.page.goto(request["url"])
    expect(browser.page.locator("#password")).to_be_visible()


def test_native_app_on_another_loopback_port(browser: Session) -> None:
    """RFC 8252 §7.3: the registered loopback URI matches any port; the code goes to the
    port asked for."""
    live = browser.live
    user = create_user(live)
    app = create_client(browser, first_party=True, public=True)
    with CallbackServer() as native:
        request = browser.authorize_url(app.client_id,
                                        redirect_uri=f"{native.origin}/callback")
        browser.context.route(f"{native.origin}/**", lambda route: route.continue_())
        browser.page.goto(request["url"])
        browser.sign_in(user)
        # A public app on loopback: the user confirms (RFC 8252 §8.6).
        expect(browser.page.locator("h1")).to_have_text("Allow access?")
        browser.page.click("button[value=allow]")
        browser.page.wait_for_url(lambda url: bool(native.arrived), timeout=TIMEOUT_MS)
        answer = query_of(native.arrived[0])
    assert browser.arrived == []  # nothing went to the registered port
    tokens = redeem(live, app, request, answer["code"])
    assert "refresh_token" in tokens
