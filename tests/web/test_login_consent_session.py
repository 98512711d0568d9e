"""The login, second-factor and consent pages, the browser session (cookie flags,
rotation at login, SSO, prompt and max_age, the ways it ends), consents and logout,
driven in-process like a browser (tests/e2e runs them in Chromium)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from provider.app import create_app
from provider.services import Services
from provider.settings import Settings
from provider.tokens.models import LoginSession
from provider.web.models import BrowserSession
from tests.audit.helpers import assert_holds_none_of, events
from tests.conftest import TestClock
from tests.factories import DEFAULT_PASSWORD, Factory, TestUser
from tests.helpers import bearer, login, refresh
from tests.mfa.helpers import code_at, enrol, freeze_in_a_step
from tests.smtp_sink import SmtpSink
from tests.users.flows import request_reset_code
from tests.web.helpers import (
    CALLBACK,
    Authorization,
    Browser,
    exchange,
    form_action,
    hidden_fields,
    is_page,
    query_of,
)

SESSION, CSRF = "provider_session", "provider_csrf"
EXPIRED_FORM = ("This form has expired or was not sent from this site. Go back, reload "
                "the page and try again.")


@pytest_asyncio.fixture(loop_scope="session")
async def browser(app: FastAPI) -> AsyncIterator[Browser]:
    """A browser of its own (its own cookie jar)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        yield Browser(http)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header
    return found


def id_claims(body: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(body["id_token"], options={"verify_signature": False})
    return decoded


async def session_rows(services: Services, user: TestUser) -> list[BrowserSession]:
    async with services.sessions() as session:
        return list((await session.scalars(select(BrowserSession).where(
            BrowserSession.user_id == uuid.UUID(user.id)))).all())


# --- login ------------------------------------------------------------------------------


async def test_login_sets_an_httponly_lax_session_cookie_and_rotates_it(
    browser: Browser, factory: Factory, services: Services
) -> None:
    user, oauth = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(oauth.client_id)
    # Session fixation: a value planted before the login is worth nothing after it.
    browser.http.cookies.set(SESSION, "planted-by-an-attacker", domain="127.0.0.1")
    page = await browser.authorize(request)
    assert is_page(page, "Sign in")
    answer = await browser.login(page, user.email, user.password)
    assert answer.status_code == 303
    cookies = set_cookies(answer)
    session_cookie = cookies[SESSION]
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert "Path=/" in session_cookie and "Secure" not in session_cookie  # http issuer
    assert f"Max-Age={int(services.settings.browser_session_ttl.total_seconds())}" in \
        session_cookie
    assert "HttpOnly" in cookies[CSRF]  # the CSRF cookie is renewed at login too
    first = browser.cookie(SESSION)
    assert first and first != "planted-by-an-attacker"
    # Only the digest is stored.
    rows = await session_rows(services, user)
    assert [r.token_hash for r in rows] == [hashlib.sha256(first.encode()).digest()]
    assert rows[0].amr == ["pwd"]
    # A second login in the same browser gets a new session; the old one ends.
    page = await browser.authorize(request, prompt="login")
    await browser.login(page, user.email, user.password)
    second = browser.cookie(SESSION)
    assert second and second != first
    rows = await session_rows(services, user)
    assert sorted(r.ended_at is None for r in rows) == [False, True]
    browser.http.cookies.set(SESSION, first, domain="127.0.0.1")
    assert is_page(await browser.authorize(request), "Sign in")  # the old one is dead


async def test_session_cookie_is_secure_and_host_prefixed_on_https(
    settings: Settings, factory: Factory
) -> None:
    issuer = "https://auth.example.com"
    application = create_app(settings.model_copy(update={"issuer": issuer}))
    user, oauth = await factory.user(), await factory.code_client(first_party=True)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=issuer) as http:
            browser = Browser(http)
            page = await browser.authorize(Authorization(oauth.client_id))
            assert "Secure" in set_cookies(page)["__Host-provider_csrf"]
            answer = await browser.login(page, user.email, user.password)
            cookie = set_cookies(answer)["__Host-provider_session"]
            for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"):
                assert flag in cookie
            assert "Domain" not in cookie
            answer = await browser.follow(answer)
            assert query_of(answer.headers["location"])["iss"] == issuer


async def test_wrong_password_unknown_user_and_disabled_account_read_the_same(
    browser: Browser, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    disabled = await factory.user()
    await factory.set_user(disabled.id, is_active=False)
    page = await browser.authorize(Authorization(oauth.client_id))
    answers = [await browser.login(page, name, password) for name, password in (
        (user.email, "wrong password"), ("nobody@example.com", DEFAULT_PASSWORD),
        (disabled.email, DEFAULT_PASSWORD))]
    for answer in answers:
        assert answer.status_code == 400
        assert is_page(answer, "Sign in")
        assert "Invalid username or password." in answer.text
        assert SESSION not in set_cookies(answer)
    assert browser.cookie(SESSION) is None
    # The typed name is kept in the form (escaped), the password never.
    assert 'value="nobody@example.com"' in answers[1].text
    assert DEFAULT_PASSWORD not in answers[1].text


async def test_login_page_links_to_the_password_reset(
    browser: Browser, factory: Factory, settings: Settings
) -> None:
    oauth = await factory.code_client()
    page = await browser.authorize(Authorization(oauth.client_id))
    assert ('<a href="/docs#/accounts/forgot_password_auth_forgot_password_post">'
            "Forgot your password?</a>") in page.text
    application = create_app(settings.model_copy(
        update={"password_reset_url": "https://app.example.com/reset?from=login"}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            page = await Browser(http).authorize(Authorization(oauth.client_id))
    assert '<a href="https://app.example.com/reset?from=login">' in page.text
    with pytest.raises(ValueError, match="PROVIDER_PASSWORD_RESET_URL"):
        Settings(_env_file=None, password_reset_url="javascript:alert(1)")  # type: ignore[call-arg]


async def test_unverified_user_hears_it_only_after_the_right_password(
    browser: Browser, factory: Factory
) -> None:
    user, oauth = await factory.user(is_verified=False), await factory.code_client()
    page = await browser.authorize(Authorization(oauth.client_id))
    assert "Invalid username or password." in (await browser.login(page, user.email,
                                                                   "nope")).text
    answer = await browser.login(page, user.email, user.password)
    assert answer.status_code == 400
    assert "The email address has not been verified yet." in answer.text


async def test_login_form_without_a_valid_csrf_token_is_refused(
    browser: Browser, factory: Factory, app: FastAPI
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    page = await browser.authorize(Authorization(oauth.client_id))
    fields = {**hidden_fields(page), "username": user.email, "password": user.password}
    http = browser.http
    for forged in ({**fields, "csrf": ""}, {**fields, "csrf": fields["csrf"] + "x"},
                   {**fields, "csrf": "é" + fields["csrf"][1:]},
                   {k: v for k, v in fields.items() if k != "csrf"}):
        answer = await http.post("/oauth/authorize/login", data=forged)
        assert answer.status_code == 403
        assert EXPIRED_FORM in answer.text
    # Another site's browser (no CSRF cookie of ours), even with a token lifted from a
    # page: refused. This is login CSRF: it would sign the victim in as the attacker.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as v:
        answer = await v.post("/oauth/authorize/login", data=fields)
        assert answer.status_code == 403
        assert SESSION not in set_cookies(answer)
    assert browser.cookie(SESSION) is None
    assert (await browser.login(page, user.email, user.password)).status_code == 303


async def test_login_page_is_throttled_like_the_password_grant(
    settings: Settings, factory: Factory, clock: TestClock
) -> None:
    tight = settings.model_copy(update={"login_throttle_account": "3 per minute",
                                        "login_throttle_address": "100000 per minute"})
    application = create_app(tight, clock=clock)
    user, oauth = await factory.user(), await factory.code_client(first_party=True)
    password_client = await factory.client()
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            browser = Browser(http)
            page = await browser.authorize(Authorization(oauth.client_id))
            statuses = [(await browser.login(page, user.email, "wrong")).status_code
                        for _ in range(3)]
            assert statuses == [400, 400, 400]
            throttled = await browser.login(page, user.email, user.password)
            assert throttled.status_code == 429
            assert int(throttled.headers["retry-after"]) > 0
            assert "Too many attempts. Try again in" in throttled.text
            assert browser.cookie(SESSION) is None  # even the right password waits
            # The password grant shares the throttle: the account is throttled there too.
            grant = await http.post("/oauth/token", auth=password_client.auth, data={
                "grant_type": "password", "username": user.email,
                "password": user.password})
            assert grant.status_code == 429
            assert grant.json()["error"] == "slow_down"


# --- SSO, prompt, max_age ------------------------------------------------------------------


async def test_single_sign_on_into_a_second_client_without_a_password(
    browser: Browser, factory: Factory
) -> None:
    user = await factory.user()
    first = await factory.code_client(first_party=True)
    second = await factory.code_client(first_party=True, name="Second App")
    request = Authorization(first.client_id)
    answer = await browser.sign_in(request, user.email, user.password)
    tokens = (await exchange(browser.http, request, answer["code"], auth=first.auth)).json()
    sso = Authorization(second.client_id)
    direct = await browser.authorize(sso)
    assert direct.status_code == 302  # no page at all
    code = query_of(direct.headers["location"])["code"]
    second_tokens = (await exchange(browser.http, sso, code, auth=second.auth)).json()
    assert id_claims(second_tokens)["auth_time"] == id_claims(tokens)["auth_time"]
    assert id_claims(second_tokens)["sub"] == user.id


async def test_prompt_login_and_max_age_ask_for_the_password_again(
    browser: Browser, factory: Factory, clock: TestClock
) -> None:
    user, oauth = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(oauth.client_id)
    first = await browser.sign_in(request, user.email, user.password)
    auth_time = id_claims((await exchange(browser.http, request, first["code"],
                                          auth=oauth.auth)).json())["auth_time"]
    # prompt=login: the login page although signed in; after it, a new auth_time.
    clock.advance(timedelta(seconds=5))
    again = Authorization(oauth.client_id)
    page = await browser.authorize(again, prompt="login")
    assert is_page(page, "Sign in")
    back = await browser.login(page, user.email, user.password)
    assert "prompt" not in query_of(back.headers["location"])
    code = query_of((await browser.follow(back)).headers["location"])["code"]
    later = id_claims((await exchange(browser.http, again, code, auth=oauth.auth)).json())
    assert later["auth_time"] >= auth_time + 5
    # max_age: within it, no page; past it, the login page.
    within = await browser.authorize(Authorization(oauth.client_id), max_age="60")
    assert within.status_code == 302
    clock.advance(timedelta(seconds=61))
    assert is_page(await browser.authorize(Authorization(oauth.client_id), max_age="60"),
                   "Sign in")
    assert (await browser.authorize(Authorization(oauth.client_id))).status_code == 302
    none = Authorization(oauth.client_id)
    answer = await browser.authorize(none, max_age="60", prompt="none")
    assert query_of(answer.headers["location"])["error"] == "login_required"


@pytest.mark.parametrize("ending", ["password_change", "password_reset", "disable", "ttl",
                                    "logout"])
async def test_browser_session_ends(
    browser: Browser, factory: Factory, services: Services, clock: TestClock,
    client: httpx.AsyncClient, mail_sink: SmtpSink, ending: str,
) -> None:
    user, oauth = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(oauth.client_id)
    await browser.sign_in(request, user.email, user.password)
    assert (await browser.authorize(request)).status_code == 302  # signed in
    if ending == "password_change":
        password_client = await factory.client()
        tokens = await login(client, password_client, user)
        changed = await client.post("/users/me/password", headers=bearer(
            tokens["access_token"]), json={"current_password": user.password,
                                          "new_password": "a brand new passphrase"})
        assert changed.status_code == 204
    elif ending == "password_reset":
        code = await request_reset_code(client, mail_sink, user.email)
        reset = await client.post("/auth/reset-password", json={
            "email": user.email, "code": code, "new_password": "a brand new passphrase"})
        assert reset.status_code == 200, reset.text
    elif ending == "disable":
        admin = await factory.user(is_admin=True)
        admin_tokens = await login(client, await factory.client(), admin, scope="admin")
        disabled = await client.patch(f"/admin/users/{user.id}", json={"is_active": False},
                                      headers=bearer(admin_tokens["access_token"]))
        assert disabled.status_code == 200, disabled.text
    elif ending == "ttl":
        clock.advance(services.settings.browser_session_ttl)
    else:
        page = await browser.http.get("/oauth/logout")
        assert is_page(page, "Sign out")
        answer = await browser.submit(page, confirm="yes")
        assert is_page(answer, "Signed out")
        assert f'{SESSION}=""' in set_cookies(answer)[SESSION]
    answer = await browser.authorize(request, prompt="none")
    assert query_of(answer.headers["location"])["error"] == "login_required"


# --- consent ----------------------------------------------------------------------------


async def test_a_third_party_client_with_no_scope_still_asks_consent(
    browser: Browser, factory: Factory
) -> None:
    """A client allowed no scope resolves to an empty scope; that is not a consent."""
    user = await factory.user()
    app = await factory.code_client(name="Scopeless App", scopes="")
    request = Authorization(app.client_id, scope=None)
    page = await browser.follow(await browser.login(await browser.authorize(request),
                                                    user.email, user.password))
    assert is_page(page, "Allow access?")
    assert "Sign you in" in page.text
    answer = await browser.submit(page, decision="allow")
    assert answer.status_code == 303 and "code" in query_of(answer.headers["location"])
    # Nothing to remember: asked again, and prompt=none gets consent_required.
    assert is_page(await browser.authorize(request), "Allow access?")
    silent = await browser.authorize(request, prompt="none")
    assert query_of(silent.headers["location"])["error"] == "consent_required"


async def test_third_party_consent_is_asked_remembered_listed_and_withdrawn(
    browser: Browser, factory: Factory, client: httpx.AsyncClient
) -> None:
    user = await factory.user()
    app = await factory.code_client(name="Third <Party> App")
    request = Authorization(app.client_id, scope="openid email")
    page = await browser.authorize(request)
    page = await browser.follow(await browser.login(page, user.email, user.password))
    assert is_page(page, "Allow access?")
    assert "Third &lt;Party&gt; App" in page.text  # escaped
    assert "See your email address" in page.text
    assert "Know who you are" in page.text
    assert f"Signed in as {user.email}" in page.text
    csp = page.headers["content-security-policy"]
    assert "form-action 'self' https://client.example.com;" in csp
    answer = await browser.submit(page, decision="allow")
    assert answer.status_code == 303
    tokens = (await exchange(browser.http, request, query_of(answer.headers["location"])
                             ["code"], auth=app.auth)).json()
    # Remembered: the same or a narrower request asks nothing.
    again = await browser.authorize(Authorization(app.client_id, scope="email"))
    assert again.status_code == 302 and "code" in query_of(again.headers["location"])
    # prompt=consent, or a wider request, asks again.
    assert is_page(await browser.authorize(request, prompt="consent"), "Allow access?")
    wider = await browser.authorize(Authorization(app.client_id, scope="openid profile"))
    assert is_page(wider, "Allow access?")
    assert "See your username and profile" in wider.text
    # prompt=none where consent is missing: consent_required.
    none = await browser.authorize(Authorization(app.client_id, scope="openid profile"),
                                   prompt="none")
    assert query_of(none.headers["location"])["error"] == "consent_required"

    # The app's own token (openid email) cannot use the account API: that needs `account`.
    for method, path in (("GET", "/users/me"), ("GET", "/users/me/consents"),
                         ("POST", "/users/me/mfa/totp"),
                         ("DELETE", f"/users/me/consents/{app.client_id}")):
        refused = await client.request(method, path, headers=bearer(tokens["access_token"]))
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["error"] == "insufficient_scope"
        assert 'scope="account"' in refused.headers["www-authenticate"]
    other_app_tokens = await login(client, await factory.client(), user)
    listed = await client.get("/users/me/consents",
                              headers=bearer(other_app_tokens["access_token"]))
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert (item["client_id"], item["client_name"], item["scopes"]) == (
        app.client_id, "Third <Party> App", ["email", "openid"])
    # Withdrawing ends the app's refresh tokens (and access tokens at our endpoints).
    withdrawn = await client.delete(f"/users/me/consents/{app.client_id}",
                                    headers=bearer(other_app_tokens["access_token"]))
    assert withdrawn.status_code == 204
    assert (await refresh(client, app, tokens["refresh_token"])).json()["error"] == \
        "invalid_grant"
    assert (await client.get("/users/me", headers=bearer(tokens["access_token"]))
            ).status_code == 401
    me = bearer(other_app_tokens["access_token"])
    assert (await client.get("/users/me/consents", headers=me)).json() == {"items": []}
    assert is_page(await browser.authorize(request), "Allow access?")
    gone = await client.delete(f"/users/me/consents/{app.client_id}", headers=me)
    assert gone.status_code == 404
    assert gone.json()["code"] == "consent_not_found"


async def test_withdrawing_consent_uses_up_the_apps_unredeemed_codes(
    browser: Browser, factory: Factory, client: httpx.AsyncClient
) -> None:
    """A code issued before the withdrawal gets no tokens after it ("it must ask again
    before it gets new ones"), and the withdrawal answers 204 for it alone."""
    user = await factory.user()
    app = await factory.code_client(scopes="openid email", name="Third Party App")
    request = Authorization(app.client_id, scope="openid email")
    code = (await browser.sign_in(request, user.email, user.password))["code"]
    me = bearer((await login(client, await factory.client(), user))["access_token"])
    withdrawn = await client.delete(f"/users/me/consents/{app.client_id}", headers=me)
    assert withdrawn.status_code == 204
    late = await exchange(browser.http, request, code, auth=app.auth)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant", late.text
    # Not a reuse (no code was redeemed twice): no alarm in the audit trail.
    assert "authorization_code.reused" not in {
        e["type"] for e in await events(factory.services, user_id=user.id)}
    # A code alone is something to withdraw too.
    await factory.set_client(app.client_id, is_first_party=True)
    code = (await browser.sign_in(request, user.email, user.password, consent=False))["code"]
    only_a_code = await client.delete(f"/users/me/consents/{app.client_id}", headers=me)
    assert only_a_code.status_code == 204
    late = await exchange(browser.http, request, code, auth=app.auth)
    assert late.status_code == 400, late.text


async def test_a_consent_form_answers_only_the_request_it_showed(
    browser: Browser, factory: Factory, clock: TestClock
) -> None:
    """The consent form's token names its request: moving the answer onto another one
    (another client, or a first-party request with prompt=login, which would skip the
    new login it asks for) is refused like a forged form, and nothing is issued."""
    user = await factory.user()
    app = await factory.code_client(scopes="openid email", name="Third Party App")
    ours = await factory.code_client(first_party=True)
    request = Authorization(app.client_id, scope="openid email")
    page = await browser.login(await browser.authorize(request), user.email, user.password)
    clock.advance(timedelta(hours=2))
    page = await browser.follow(page)
    assert is_page(page, "Allow access?"), page.text
    fields = hidden_fields(page)
    for moved in (Authorization(ours.client_id).params(prompt="login", max_age="0"),
                  Authorization(app.client_id, scope="openid").params()):
        answer = await browser.http.post(
            form_action(page), data={**fields, "request": urlencode(moved),
                                     "decision": "allow"})
        assert answer.status_code == 403 and EXPIRED_FORM in answer.text, answer.text
    assert (await browser.submit(page, decision="allow")).status_code == 303  # the control


async def test_a_consent_answered_past_the_requests_max_age_asks_for_the_login(
    browser: Browser, factory: Factory, clock: TestClock
) -> None:
    user = await factory.user()
    app = await factory.code_client(scopes="openid email", name="Third Party App")
    request = Authorization(app.client_id, scope="openid email", extra={"max_age": "600"})
    page = await browser.follow(await browser.login(await browser.authorize(request),
                                                    user.email, user.password))
    # After the login the flow goes on without max_age (the login just met it): ask
    # with it again from a live session, as a later request of the app would.
    page = await browser.authorize(request)
    assert is_page(page, "Allow access?"), page.text
    clock.advance(timedelta(seconds=601))
    answer = await browser.submit(page, decision="allow")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/oauth/authorize?"), answer.headers
    assert is_page(await browser.follow(answer), "Sign in")


async def test_consent_denied_goes_back_as_access_denied(
    browser: Browser, factory: Factory
) -> None:
    user, app = await factory.user(), await factory.code_client()
    request = Authorization(app.client_id)
    page = await browser.follow(await browser.login(await browser.authorize(request),
                                                    user.email, user.password))
    answer = await browser.submit(page, decision="deny")
    assert answer.status_code == 303
    assert query_of(answer.headers["location"]) == {
        "error": "access_denied", "error_description": "The user denied the request.",
        "state": request.state, "iss": "http://127.0.0.1:8000"}


async def test_consent_form_without_a_valid_csrf_token_is_refused(
    browser: Browser, factory: Factory, services: Services
) -> None:
    user, app = await factory.user(), await factory.code_client()
    request = Authorization(app.client_id)
    page = await browser.follow(await browser.login(await browser.authorize(request),
                                                    user.email, user.password))
    fields = {**hidden_fields(page), "decision": "allow"}
    # A token of another form (the login form's purpose) or of nothing: refused.
    login_token = services.csrf.token(browser.cookie(CSRF) or "", "login")
    for forged in ({**fields, "csrf": login_token}, {**fields, "csrf": "x"}):
        answer = await browser.http.post("/oauth/authorize/consent", data=forged)
        assert answer.status_code == 403
        assert EXPIRED_FORM in answer.text
    assert is_page(await browser.authorize(request), "Allow access?")  # nothing granted
    assert (await browser.http.post("/oauth/authorize/consent", data=fields)
            ).status_code == 303


@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1/cb", "http://[::1]/cb",
                                          "com.example.app:/cb"])
@pytest.mark.parametrize("first_party", [True, False])
async def test_a_public_app_on_loopback_or_its_own_scheme_is_confirmed_every_time(
    browser: Browser, factory: Factory, redirect_uri: str, first_party: bool
) -> None:
    """RFC 8252 §8.6: any program on the device can listen on a loopback port or claim a
    scheme and ask in a public app's name, so neither single sign-on, an earlier
    answer nor being first-party lets such a request through without the user."""
    user = await factory.user()
    app = await factory.code_client(public=True, first_party=first_party,
                                    redirect_uris=(redirect_uri,), scopes="openid email")
    asked = redirect_uri.replace("127.0.0.1/", "127.0.0.1:51234/")  # any port (§7.3)
    request = Authorization(app.client_id, redirect_uri=asked, scope="openid email")
    answer = await browser.sign_in(request, user.email, user.password)
    assert (await exchange(browser.http, request, answer["code"])).status_code == 200
    # Signed in, and the app was allowed a moment ago: asked again all the same.
    page = await browser.authorize(request)
    assert is_page(page, "Allow access?"), page.text
    allowed = await browser.submit(page, decision="allow")
    code = query_of(allowed.headers["location"])["code"]
    assert (await exchange(browser.http, request, code)).status_code == 200
    silent = await browser.authorize(request, prompt="none")
    assert silent.status_code == 302
    assert query_of(silent.headers["location"])["error"] == "consent_required"


async def test_a_public_app_on_https_and_a_confidential_one_on_loopback_get_sso(
    browser: Browser, factory: Factory
) -> None:
    """The controls: an https redirect proves its origin, a secret proves its client."""
    user = await factory.user()
    spa = await factory.code_client(public=True, first_party=True)
    confidential = await factory.code_client(first_party=True,
                                             redirect_uris=("http://127.0.0.1/cb",))
    await browser.sign_in(Authorization(spa.client_id), user.email, user.password,
                          consent=False)
    for app, redirect_uri in ((spa, CALLBACK), (confidential, "http://127.0.0.1:4321/cb")):
        silent = await browser.authorize(Authorization(app.client_id,
                                                       redirect_uri=redirect_uri),
                                         prompt="none")
        assert "code" in query_of(silent.headers["location"]), silent.headers


async def test_first_party_client_asks_no_consent(browser: Browser, factory: Factory
                                                  ) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    answer = await browser.sign_in(Authorization(app.client_id), user.email, user.password,
                                   consent=False)
    assert "code" in answer


# --- second factor ------------------------------------------------------------------------


async def test_login_with_totp_asks_for_the_code(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, clock: TestClock,
    services: Services,
) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    freeze_in_a_step(clock)
    enrolled = await enrol(client, clock, await factory.client(), user)
    request = Authorization(app.client_id)
    page = await browser.login(await browser.authorize(request), user.email, user.password)
    assert is_page(page, "Two-step verification")
    assert browser.cookie(SESSION) is None  # the password alone signs nobody in
    clock.advance(timedelta(seconds=30))
    wrong = await browser.submit(page, otp="000000")
    assert wrong.status_code == 400 and "The code is wrong or was already used." in wrong.text
    right = await browser.submit(page, otp=code_at(enrolled.secret, clock.now()))
    assert right.status_code == 303, right.text
    code = query_of((await browser.follow(right)).headers["location"])["code"]
    body = (await exchange(browser.http, request, code, auth=app.auth)).json()
    assert id_claims(body)["amr"] == ["pwd", "otp", "mfa"]
    # Replaying that form fails: its CSRF token died with the login, and its mfa_token
    # was used up (with a fresh CSRF token: back to the password).
    replay = await browser.submit(page, otp=code_at(enrolled.secret, clock.now()))
    assert replay.status_code == 403
    fresh = services.csrf.token(browser.cookie(CSRF) or "", "mfa")
    replay = await browser.submit(page, otp=code_at(enrolled.secret, clock.now()), csrf=fresh)
    assert is_page(replay, "Sign in")
    assert "Your sign-in took too long. Enter your password again." in replay.text
    [row] = [r for r in await session_rows(services, user) if r.ended_at is None]
    assert row.amr == ["pwd", "otp", "mfa"]


async def test_a_password_only_session_gives_no_code_once_totp_is_on(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, clock: TestClock,
) -> None:
    """Single sign-on never skips the factor the account requires now: a browser signed
    in with the password before TOTP was turned on signs in again, with the code."""
    user, app = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(app.client_id)
    assert "code" in await browser.sign_in(request, user.email, user.password,
                                           consent=False)
    freeze_in_a_step(clock)
    enrolled = await enrol(client, clock, await factory.client(), user)
    silent = await browser.authorize(request, prompt="none")
    assert silent.status_code == 302
    assert query_of(silent.headers["location"])["error"] == "login_required"
    page = await browser.authorize(request)
    assert is_page(page, "Sign in"), page.text
    page = await browser.login(page, user.email, user.password)
    assert is_page(page, "Two-step verification")
    clock.advance(timedelta(seconds=30))
    right = await browser.submit(page, otp=code_at(enrolled.secret, clock.now()))
    code = query_of((await browser.follow(right)).headers["location"])["code"]
    body = (await exchange(browser.http, request, code, auth=app.auth)).json()
    assert id_claims(body)["amr"] == ["pwd", "otp", "mfa"]
    # With the factor shown, single sign-on works again.
    assert "code" in query_of((await browser.authorize(request, prompt="none")
                               ).headers["location"])


async def test_login_with_a_recovery_code(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, clock: TestClock
) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    freeze_in_a_step(clock)
    enrolled = await enrol(client, clock, await factory.client(), user)
    request = Authorization(app.client_id)
    page = await browser.login(await browser.authorize(request), user.email, user.password)
    right = await browser.submit(page, otp=enrolled.recovery_codes[0])
    code = query_of((await browser.follow(right)).headers["location"])["code"]
    body = (await exchange(browser.http, request, code, auth=app.auth)).json()
    assert id_claims(body)["amr"] == ["pwd", "mfa"]


# --- logout -------------------------------------------------------------------------------


async def test_logout_with_id_token_hint_ends_the_session_and_returns_with_state(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, services: Services
) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(app.client_id)
    answer = await browser.sign_in(request, user.email, user.password)
    tokens = (await exchange(browser.http, request, answer["code"], auth=app.auth)).json()
    bye = await browser.http.get("/oauth/logout", params={
        "id_token_hint": tokens["id_token"], "state": "s-1",
        "post_logout_redirect_uri": "https://client.example.com/bye"})
    assert bye.status_code == 302
    assert bye.headers["location"] == "https://client.example.com/bye?state=s-1"
    assert f'{SESSION}=""' in set_cookies(bye)[SESSION]
    assert all(r.ended_at is not None for r in await session_rows(services, user))
    # The RP's own session (the ID token's sid) ended too.
    assert (await refresh(client, app, tokens["refresh_token"])).status_code == 400
    async with services.sessions() as session:
        row = await session.get(LoginSession, uuid.UUID(id_claims(tokens)["sid"]))
    assert row is not None and row.revoked_at is not None
    answer = await browser.authorize(request, prompt="none")
    assert query_of(answer.headers["location"])["error"] == "login_required"


async def test_a_hint_from_a_browser_without_its_session_asks_first(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, app: FastAPI
) -> None:
    """An ID token is no proof that its holder is its user (it may have leaked from a log
    or an API call): a logout link followed without that user's browser session asks
    first (RP-Initiated Logout §2), and even confirmed it ends only that browser's own
    session, never the ID token's app session."""
    user, rp = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(rp.client_id)
    answer = await browser.sign_in(request, user.email, user.password)
    tokens = (await exchange(browser.http, request, answer["code"], auth=rp.auth)).json()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        stranger = Browser(http)
        for ask in (http.get("/oauth/logout", params={"id_token_hint": tokens["id_token"]}),
                    http.post("/oauth/logout", data={"id_token_hint": tokens["id_token"]})):
            page = await ask
            assert is_page(page, "Sign out"), page.text
        rotated = await refresh(client, rp, tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text  # nothing ended
        bye = await stranger.submit(page, confirm="yes")
        assert is_page(bye, "Signed out"), bye.text  # no post_logout_redirect_uri
    assert (await refresh(client, rp, rotated.json()["refresh_token"])).status_code == 200
    assert (await browser.authorize(request)).status_code == 302  # another browser's


@pytest.mark.parametrize(("params", "message"), [
    ({"post_logout_redirect_uri": "https://evil.example.net/"},
     "post_logout_redirect_uri needs id_token_hint or client_id."),
    ({"post_logout_redirect_uri": "https://client.example.com/bye/x", "client_id": "APP"},
     "The post_logout_redirect_uri is not registered for this application."),
    ({"post_logout_redirect_uri": "https://client.example.com/callback",  # a redirect_uri
      "client_id": "APP"},
     "The post_logout_redirect_uri is not registered for this application."),
    ({"id_token_hint": "not.a.token"}, "The id_token_hint is not an ID token of this server."),
    ({"client_id": "cl_unknown"}, "The application that sent you here is not known"),
])
async def test_logout_never_redirects_to_what_is_not_registered(
    browser: Browser, factory: Factory, params: dict[str, str], message: str
) -> None:
    app = await factory.code_client()
    params = {k: app.client_id if v == "APP" else v for k, v in params.items()}
    answer = await browser.http.get("/oauth/logout", params=params)
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert message in answer.text


async def test_logout_with_an_access_token_as_hint_is_refused(
    browser: Browser, factory: Factory
) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(app.client_id)
    answer = await browser.sign_in(request, user.email, user.password)
    tokens = (await exchange(browser.http, request, answer["code"], auth=app.auth)).json()
    refused = await browser.http.get("/oauth/logout",
                                     params={"id_token_hint": tokens["access_token"]})
    assert refused.status_code == 400
    assert (await browser.authorize(request)).status_code == 302  # still signed in


async def test_logout_without_a_hint_asks_first_and_checks_csrf(
    browser: Browser, factory: Factory
) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    request = Authorization(app.client_id)
    await browser.sign_in(request, user.email, user.password)
    page = await browser.http.get("/oauth/logout", params={
        "client_id": app.client_id, "post_logout_redirect_uri": "https://client.example.com/bye",
        "state": "z"})
    assert is_page(page, "Sign out")
    assert f"You are signed in as {user.email}" in page.text
    assert (await browser.authorize(request)).status_code == 302  # not yet
    forged = await browser.http.post("/oauth/logout", data={
        **hidden_fields(page), "csrf": "forged", "confirm": "yes"})
    assert forged.status_code == 403
    assert (await browser.authorize(request)).status_code == 302  # still signed in
    bye = await browser.submit(page, confirm="yes")
    assert bye.status_code == 303
    assert bye.headers["location"] == "https://client.example.com/bye?state=z"
    answer = await browser.authorize(request, prompt="none")
    assert query_of(answer.headers["location"])["error"] == "login_required"


async def test_stored_session_token_is_a_digest(browser: Browser, factory: Factory,
                                                services: Services) -> None:
    user, app = await factory.user(), await factory.code_client(first_party=True)
    await browser.sign_in(Authorization(app.client_id), user.email, user.password)
    token = browser.cookie(SESSION)
    assert token is not None and len(token) >= 43
    async with services.sessions() as session:
        stored = (await session.scalars(select(BrowserSession.token_hash))).all()
    assert hashlib.sha256(token.encode()).digest() in stored
    assert CALLBACK  # (the helpers' default redirect URI is the registered one)


async def test_audit_trail_of_the_code_flow_holds_no_secret(
    browser: Browser, factory: Factory, client: httpx.AsyncClient, services: Services
) -> None:
    user, app = await factory.user(), await factory.code_client()
    request = Authorization(app.client_id, scope="openid email")
    page = await browser.authorize(request)
    await browser.login(page, user.email, "a wrong password")
    answer = await browser.sign_in(request, user.email, user.password)
    first = await exchange(browser.http, request, answer["code"], auth=app.auth)
    tokens = first.json()
    await exchange(browser.http, request, answer["code"], auth=app.auth)  # reused
    again = await browser.sign_in(Authorization(app.client_id), user.email, user.password)
    withdrawn = await client.delete(
        f"/users/me/consents/{app.client_id}",
        headers=bearer((await login(client, await factory.client(), user))["access_token"]))
    assert withdrawn.status_code == 204
    await browser.http.get("/oauth/logout", params={"id_token_hint": tokens["id_token"]})
    found = await events(services, user_id=user.id)
    kinds = [(e["type"], e["outcome"], e["details"].get("method")) for e in found
             if e["client_id"] == app.client_id]
    assert ("login", "failure", "login_page") in kinds
    assert ("login", "success", "login_page") in kinds
    assert ("login", "success", "authorization_code") in kinds
    assert ("authorization_code.reused", "failure", None) in kinds
    assert ("consent.withdrawn", "success", None) in kinds
    assert ("logout", "success", None) in kinds
    granted = [e for e in found if e["type"] == "consent.granted"]
    # (The second sign-in asked for more: a second consent.)
    assert [e["details"] for e in granted] == [{"scopes": ["openid", "email"]},
                                               {"scopes": ["openid", "profile", "email"]}]
    failure = next(e for e in found if e["type"] == "login" and e["outcome"] == "failure")
    assert failure["details"] == {"method": "login_page", "reason": "wrong_password"}
    assert_holds_none_of(found, user.password, "a wrong password", answer["code"],
                         again["code"], tokens["access_token"], tokens["refresh_token"],
                         tokens["id_token"], app.client_secret, browser.cookie(SESSION),
                         browser.cookie(CSRF), request.verifier)
