"""GET /oauth/authorize: what is never redirected to (an error page), what goes back to
the client as an error (with state and iss, RFC 9207), and PKCE required of everyone."""

from __future__ import annotations

import httpx
import pytest

from provider.web.flow import Flow
from tests.factories import Factory
from tests.web.helpers import CALLBACK, Authorization, Browser, is_page, query_of

ISSUER = "http://127.0.0.1:8000"
APP = "https://client.example.com"


def assert_error_page(response: httpx.Response, message: str) -> None:
    """An error page: 400, HTML, the message, and no way back to anyone."""
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert is_page(response, "Sign-in problem"), response.text
    assert message in response.text
    assert response.headers["cache-control"] == "no-store"


def assert_client_error(response: httpx.Response, request: Authorization, error: str,
                        description: str, *, redirect_uri: str = CALLBACK) -> None:
    """The error went back to the client's redirect URI with state and iss."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(redirect_uri + "?"), location
    assert query_of(location) == {"error": error, "error_description": description,
                                  "state": request.state, "iss": ISSUER}


@pytest.fixture
async def app_client(factory: Factory) -> str:
    return (await factory.code_client(redirect_uris=(
        CALLBACK, f"{APP}/callback?tenant=a", "http://127.0.0.1/native",
        "com.example.app:/oauth", "http://[::1]:8080/cb"))).client_id


@pytest.mark.parametrize("redirect_uri", [
    "https://evil.example.net/callback",                   # other host
    "https://client.example.com.evil.net/callback",        # suffix of the host
    "https://client.example.com/callback/extra",           # a path below
    "https://client.example.com/call",                     # a prefix of the path
    "https://client.example.com/callback/",                # a trailing slash
    "https://client.example.com/callback?extra=1",         # an extra query
    "https://client.example.com/callback?tenant=a&x=1",    # a longer query
    "https://client.example.com:8443/callback",            # another port
    "https://client.example.com:443/callback",             # the default port, spelt out
    "http://client.example.com/callback",                  # another scheme
    "HTTPS://CLIENT.EXAMPLE.COM/callback",                 # another case
    "https://client.example.com/callback#fragment",        # a fragment
    "https://client.example.com/%63allback",               # percent-encoded
    "https://client.example.com@evil.example.net/callback",  # userinfo tricks
    "https://evil.example.net@client.example.com/callback",
    "https://client.example.com\\@evil.example.net/callback",
    "https://client.example.com/callback/../callback",
    "//evil.example.net/callback",
    "http://127.0.0.1:8080/native/",                       # loopback, other path
    "http://127.0.0.1:8080/nativex",
    "http://127.0.0.1:8080@evil.example.net/native",       # loopback userinfo trick
    "http://127.0.0.2:8080/native",                        # other loopback address
    "http://localhost:8080/native",                        # localhost is not the literal
    "https://127.0.0.1:8080/native",
    "http://[::1]:8080/cb/x",
    "com.example.app:/oauth/x",
    "com.example.evil:/oauth",
    "javascript:alert(1)",
])
async def test_unregistered_redirect_uri_gets_an_error_page_never_a_redirect(
    client: httpx.AsyncClient, app_client: str, redirect_uri: str
) -> None:
    request = Authorization(app_client)
    response = await Browser(client).authorize(request, redirect_uri=redirect_uri)
    assert_error_page(response, "The redirect_uri is not registered for this application.")


@pytest.mark.parametrize(("redirect_uri", "sent_to"), [
    ("http://127.0.0.1:53117/native", "http://127.0.0.1:53117/native"),  # any port
    ("http://127.0.0.1/native", "http://127.0.0.1/native"),
    ("http://[::1]:61000/cb", "http://[::1]:61000/cb"),
    ("com.example.app:/oauth", "com.example.app:/oauth"),
    (f"{APP}/callback?tenant=a", f"{APP}/callback?tenant=a&"),  # its query is kept
])
async def test_registered_redirect_uris_match_exactly_and_loopback_on_any_port(
    client: httpx.AsyncClient, app_client: str, redirect_uri: str, sent_to: str
) -> None:
    request = Authorization(app_client, redirect_uri=redirect_uri)
    # Without a session the answer is the login page; prompt=none shows where it goes.
    response = await Browser(client).authorize(request, prompt="none")
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(sent_to.rstrip("&") + ("&" if "?" in sent_to else "?"))
    assert query_of(location)["error"] == "login_required"


async def test_unknown_missing_or_inactive_client_gets_an_error_page(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    browser = Browser(client)
    unknown = await browser.authorize(Authorization("cl_nope"))
    assert_error_page(unknown, "The application that sent you here is not known")
    missing = await browser.authorize(Authorization("x"), client_id=None)
    assert_error_page(missing, "client_id is missing")
    inactive = await factory.code_client()
    await factory.set_client(inactive.client_id, is_active=False)
    assert_error_page(await browser.authorize(Authorization(inactive.client_id)),
                      "The application that sent you here is not known")


async def test_redirect_uri_required_when_several_are_registered(
    client: httpx.AsyncClient, app_client: str, factory: Factory
) -> None:
    browser = Browser(client)
    response = await browser.authorize(Authorization(app_client, redirect_uri=None))
    assert_error_page(response, "must name its redirect_uri")
    none_registered = await factory.code_client(redirect_uris=())
    assert_error_page(await browser.authorize(Authorization(none_registered.client_id)),
                      "no redirect URI registered")
    # With exactly one registered it may be left out.
    single = await factory.code_client()
    answer = await browser.authorize(Authorization(single.client_id, redirect_uri=None),
                                     prompt="none")
    assert answer.headers["location"].startswith(CALLBACK + "?error=login_required")


async def test_repeated_client_id_or_redirect_uri_gets_an_error_page(
    client: httpx.AsyncClient, app_client: str
) -> None:
    request = Authorization(app_client)
    query = httpx.QueryParams(request.params()).add("redirect_uri", CALLBACK)
    assert_error_page(await client.get("/oauth/authorize", params=query),
                      "The redirect_uri parameter is repeated.")
    query = httpx.QueryParams(request.params()).add("client_id", app_client)
    assert_error_page(await client.get("/oauth/authorize", params=query),
                      "The client_id parameter is repeated.")
    # Any other repeated parameter goes back to the (validated) client.
    query = httpx.QueryParams(request.params()).add("scope", "openid")
    assert_client_error(await client.get("/oauth/authorize", params=query), request,
                        "invalid_request", "The scope parameter is repeated.")
    # A name that is not plain ASCII is not echoed into the redirect (RFC 6749 §4.1.2.1).
    odd = httpx.QueryParams(request.params()).add("sc\u00f6pe", "1").add("sc\u00f6pe", "2")
    assert_client_error(await client.get("/oauth/authorize", params=odd), request,
                        "invalid_request", "A parameter is repeated.")


PKCE_REQUIRED = "PKCE is required: send code_challenge and code_challenge_method=S256."
S256_ONLY = "code_challenge_method must be S256 (plain is not allowed)."


@pytest.mark.parametrize(("overrides", "error", "description"), [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request",
     PKCE_REQUIRED),
    ({"code_challenge": None}, "invalid_request", PKCE_REQUIRED),
    ({"code_challenge_method": "plain"}, "invalid_request", S256_ONLY),
    ({"code_challenge_method": None}, "invalid_request", S256_ONLY),  # default is plain
    ({"code_challenge_method": "s256"}, "invalid_request", S256_ONLY),
    ({"code_challenge": "too-short"}, "invalid_request",
     "The code_challenge is not an S256 challenge (43 base64url characters)."),
    ({"code_challenge": "a" * 42 + "="}, "invalid_request",
     "The code_challenge is not an S256 challenge (43 base64url characters)."),
    ({"response_type": None}, "invalid_request", "The response_type parameter is required."),
    ({"response_type": "token"}, "unsupported_response_type",
     "Only response_type=code is supported."),
    ({"response_type": "code id_token"}, "unsupported_response_type",
     "Only response_type=code is supported."),
    ({"response_mode": "fragment"}, "invalid_request", "Only response_mode=query is supported."),
    ({"scope": "openid billing"}, "invalid_scope", "Scope not allowed: billing."),
    ({"prompt": "none login"}, "invalid_request",
     "prompt=none cannot be combined with other values."),
    ({"prompt": "select_account"}, "invalid_request",
     "Unsupported prompt value: select_account."),
    # A value that is not plain ASCII is not echoed into the redirect (RFC 6749 §4.1.2.1).
    ({"prompt": "l\u00f6gin"}, "invalid_request", "Unsupported prompt value."),
    ({"scope": "openid r\u00e9ports"}, "invalid_scope", "Scope not allowed."),
    ({"max_age": "-1"}, "invalid_request", "max_age must be a number of seconds."),
    ({"max_age": "\uff11\uff10"}, "invalid_request",  # full-width digits
     "max_age must be a number of seconds."),
    ({"request": "eyJ.x.y"}, "request_not_supported", "Request objects are not supported."),
    ({"request_uri": "https://x"}, "request_uri_not_supported",
     "request_uri is not supported."),
])
async def test_invalid_requests_go_back_to_the_client_with_state_and_iss(
    client: httpx.AsyncClient, factory: Factory, overrides: dict[str, str | None],
    error: str, description: str,
) -> None:
    oauth = await factory.code_client(scopes="openid profile email")
    request = Authorization(oauth.client_id)
    response = await Browser(client).authorize(request, **overrides)
    assert_client_error(response, request, error, description)


async def test_client_without_the_code_grant_is_unauthorized(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    oauth = await factory.client(grants=("password",), redirect_uris=(CALLBACK,))
    request = Authorization(oauth.client_id)
    assert_client_error(await Browser(client).authorize(request), request,
                        "unauthorized_client",
                        "The client is not allowed to use the authorization code flow.")


async def test_prompt_none_without_a_session_is_login_required(
    client: httpx.AsyncClient, app_client: str
) -> None:
    request = Authorization(app_client)
    response = await Browser(client).authorize(request, prompt="none")
    assert_client_error(response, request, "login_required", "The user is not signed in.")


async def test_state_is_optional_and_never_invented(
    client: httpx.AsyncClient, app_client: str
) -> None:
    request = Authorization(app_client, state=None)
    response = await Browser(client).authorize(request, prompt="none")
    assert query_of(response.headers["location"]) == {
        "error": "login_required", "error_description": "The user is not signed in.",
        "iss": ISSUER}


async def test_authorization_request_by_post_is_the_same_request(
    client: httpx.AsyncClient, app_client: str
) -> None:
    request = Authorization(app_client)
    response = await client.post("/oauth/authorize", data=request.params(prompt="none"))
    assert_client_error(response, request, "login_required", "The user is not signed in.")
    page = await client.post("/oauth/authorize", data=request.params())
    assert is_page(page, "Sign in")


async def test_login_page_is_unframeable_with_a_strict_csp_and_no_script(
    client: httpx.AsyncClient, app_client: str
) -> None:
    page = await Browser(client).authorize(Authorization(app_client))
    assert page.status_code == 200
    assert is_page(page, "Sign in")
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["style-src"].startswith("'sha256-")
    assert "script-src" not in directives  # default-src 'none': no script at all
    # Forms post to us; their answer may only redirect to this client.
    assert directives["form-action"] == f"'self' {APP}"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text.lower()
    assert "http://" not in page.text and "https://" not in page.text  # no asset elsewhere


async def test_login_hint_fills_the_form_escaped(
    client: httpx.AsyncClient, app_client: str
) -> None:
    page = await Browser(client).authorize(Authorization(app_client),
                                           login_hint='ada@example.com"><b>x')
    assert 'value="ada@example.com&#34;&gt;&lt;b&gt;x"' in page.text
    assert "<b>x" not in page.text


async def test_oversized_requests_get_an_error_page(client: httpx.AsyncClient,
                                                    app_client: str) -> None:
    query = "&".join(f"p{i}=x" for i in range(200))
    response = await client.get(f"/oauth/authorize?client_id={app_client}&{query}")
    assert_error_page(response, "too many parameters")
    logout = await client.get(f"/oauth/logout?{query}")
    assert logout.status_code == 400 and "location" not in logout.headers
    page = await client.post("/oauth/authorize/login", content=b"x=" + b"y" * 20_000,
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert page.status_code == 400


async def test_a_fault_on_a_page_is_a_page_without_its_details(
    client: httpx.AsyncClient, app_client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret-detail-of-the-fault")

    monkeypatch.setattr(Flow, "authorize", broken)
    page = await Browser(client).authorize(Authorization(app_client))
    assert page.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert is_page(page, "Something went wrong"), page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "secret-detail-of-the-fault" not in page.text
    assert "Traceback" not in page.text
    # With the fault gone, the page is back.
    monkeypatch.undo()
    assert (await Browser(client).authorize(Authorization(app_client))).status_code == 200
