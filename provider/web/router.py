"""The browser's endpoints of the authorization code flow: the authorization endpoint,
the login, second-factor and consent forms, and RP-initiated logout (pages, not JSON).
The flow itself is provider.web.flow."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from provider.oauth.authorize import CODE_CHALLENGE_METHODS, PROMPTS
from provider.services import Services
from provider.web.flow import Flow, read_form
from provider.web.pages import (
    AUTHORIZE_PATH,
    CONSENT_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    MFA_PATH,
)

router = APIRouter(tags=["oauth"])

HTML = {"text/html": {"schema": {"type": "string"}}}
# The database or the rate-limit service is out (provider.app's handlers).
UNAVAILABLE_PAGE = {"description": "Error page: try again shortly (see Retry-After)",
                    "content": HTML, "headers": {"Retry-After": {
                        "schema": {"type": "integer"}, "description": "Seconds"}}}


def _query(name: str, description: str, *, required: bool = False,
           enum: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if enum:
        schema["enum"] = enum
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


AUTHORIZE_DOC: dict[str, Any] = {
    "parameters": [
        _query("response_type", "code", required=True, enum=["code"]),
        _query("client_id", "The client", required=True),
        _query("redirect_uri", "Exactly one of the client's registered redirect URIs "
               "(a loopback http URI: any port); required when it has several"),
        _query("scope", "Space-separated scopes (default: the client's, without admin)"),
        _query("state", "Echoed back (CSRF protection of the client)"),
        _query("code_challenge", "PKCE: BASE64URL(SHA-256(code_verifier))", required=True),
        _query("code_challenge_method", "PKCE method", required=True,
               enum=list(CODE_CHALLENGE_METHODS)),
        _query("nonce", "OIDC: copied into the ID token"),
        _query("prompt", f"OIDC: any of {', '.join(PROMPTS)} (none alone)"),
        _query("max_age", "OIDC: seconds since the last login after which to log in again"),
        _query("login_hint", "OIDC: fills in the login form's email or username"),
        _query("response_mode", "query only", enum=["query"]),
    ],
}


def query_pairs(request: Request) -> list[tuple[str, str]] | None:
    """The query's parameters; None when there are too many to be a real request."""
    try:
        return parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=64)
    except ValueError:
        return None


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get(
    AUTHORIZE_PATH,
    summary="Authorization endpoint (OAuth 2.1 authorization code flow with PKCE, OIDC)",
    description=(
        "A browser page, not JSON. Signs the user in (login page, a second factor when "
        "enabled, single sign-on through a browser session), asks for consent for "
        "third-party clients, then redirects to `redirect_uri` with `code`, `state` and "
        "`iss` (RFC 9207), or with `error`, `error_description`, `state` and `iss`. An "
        "unknown client or a `redirect_uri` that is not registered gets an error page, "
        "never a redirect. PKCE with S256 is required of every client."),
    response_class=Response,
    responses={302: {"description": "Back to the client: code or error"},
               200: {"description": "Login or consent page", "content": HTML},
               400: {"description": "Error page (unknown client, bad redirect_uri)",
                     "content": HTML},
               503: UNAVAILABLE_PAGE},
    openapi_extra=AUTHORIZE_DOC,
)
async def authorize(request: Request) -> Response:
    flow = Flow(_services(request), request)
    pairs = query_pairs(request)
    if pairs is None:
        return flow.error_page("The authorization request has too many parameters.")
    return await flow.authorize(pairs)


@router.post(AUTHORIZE_PATH, include_in_schema=False)
async def authorize_post(request: Request) -> Response:
    """OIDC Core §3.1.2.1: the authorization endpoint takes POST (a form) too."""
    form = await read_form(request)
    flow = Flow(_services(request), request)
    if form is None:
        return flow.error_page("The authorization request could not be read.")
    return await flow.authorize(list(form.items()))


@router.post(LOGIN_PATH, include_in_schema=False)
async def login(request: Request) -> Response:
    return await Flow(_services(request), request).login(await read_form(request))


@router.post(MFA_PATH, include_in_schema=False)
async def second_factor(request: Request) -> Response:
    return await Flow(_services(request), request).second_factor(await read_form(request))


@router.post(CONSENT_PATH, include_in_schema=False)
async def consent(request: Request) -> Response:
    return await Flow(_services(request), request).consent(await read_form(request))


LOGOUT_DOC: dict[str, Any] = {
    "parameters": [
        _query("id_token_hint", "An ID token this server issued to the client (expired "
               "is fine): the logout then needs no confirmation"),
        _query("post_logout_redirect_uri", "Registered for the client, exactly"),
        _query("state", "Echoed back to post_logout_redirect_uri"),
        _query("client_id", "The client, when there is no id_token_hint"),
    ],
}
LOGOUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    302: {"description": "Signed out: back to post_logout_redirect_uri (with state)"},
    200: {"description": "Confirmation page, or signed out", "content": HTML},
    400: {"description": "Error page (bad hint, unregistered redirect)", "content": HTML},
    503: UNAVAILABLE_PAGE,
}


def _single(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            return None
        values[name] = value
    return {k: v for k, v in values.items() if v != ""}


@router.get(
    LOGOUT_PATH,
    summary="RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0)",
    description=(
        "Ends the browser session (single sign-on) and, with an `id_token_hint`, the "
        "session that ID token belongs to. Without a hint of the signed-in user the "
        "user confirms on a page first."),
    response_class=Response,
    responses=LOGOUT_RESPONSES,
    openapi_extra=LOGOUT_DOC,
)
async def logout(request: Request) -> Response:
    pairs = query_pairs(request)
    params = _single(pairs) if pairs is not None else None
    return await Flow(_services(request), request).logout(params, confirmed=False,
                                                          is_post=False)


@router.post(
    LOGOUT_PATH,
    summary="RP-initiated logout (form post; also the confirmation page's answer)",
    response_class=Response,
    responses={**LOGOUT_RESPONSES, 303: LOGOUT_RESPONSES[302]},
)
async def logout_post(request: Request) -> Response:
    form = await read_form(request)
    confirmed = form is not None and form.get("confirm") == "yes"
    params = None if form is None else {k: v for k, v in form.items()
                                        if v != "" and k != "confirm"}
    return await Flow(_services(request), request).logout(params, confirmed=confirmed,
                                                          is_post=True)
