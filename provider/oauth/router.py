"""OAuth HTTP endpoints: token, revocation, introspection, userinfo, metadata, JWKS."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from provider.db import is_foreign_key_violation
from provider.deps import (
    ClaimsDep,
    CurrentUser,
    ServicesDep,
    client_address,
    request_context,
)
from provider.logs import note_client
from provider.metrics import count_tokens_issued
from provider.oauth.client_auth import authenticate_client
from provider.oauth.errors import (
    NO_STORE,
    InvalidClient,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from provider.oauth.form import FORM_TYPE, read_form
from provider.oauth.grants import CLIENT_GRANT_TYPE, GRANT_TYPES, GRANTS
from provider.oauth.grants.base import TokenRequest, require
from provider.oauth.introspection import introspect
from provider.oauth.metadata import authorization_server_metadata
from provider.oauth.revocation import revoke
from provider.oauth.schemas import (
    IntrospectionResponse,
    MfaRequiredBody,
    TokenResponse,
    UserInfo,
)
from provider.oidc.discovery import openid_configuration
from provider.oidc.userinfo import userinfo_claims
from provider.responses import USERINFO_ERRORS, oauth_errors
from provider.services import Services

router = APIRouter(tags=["oauth"])

METADATA_CACHE = {"Cache-Control": "public, max-age=3600"}


def _form_body(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                FORM_TYPE: {
                    "schema": {"type": "object", "properties": fields, "required": required}
                }
            },
        }
    }


_string = {"type": "string"}
TOKEN_FORM = _form_body(
    {
        "grant_type": {"type": "string", "enum": list(GRANT_TYPES)},
        "username": {**_string, "description": "email or username (password grant)"},
        "password": {**_string, "format": "password"},
        "refresh_token": _string,
        "otp": {**_string, "description": (
            "password grant of a user with two-step verification, or mfa-otp grant: the "
            "6-digit code of the authenticator app, or a recovery code")},
        "mfa_token": {**_string, "description": (
            "mfa-otp grant: the mfa_token of the password grant's 403 mfa_required "
            "answer (5 minutes, single use, this client and scope only)")},
        "code": {**_string, "description": (
            "authorization_code grant: the code of /oauth/authorize's answer (60 s, once)")},
        "code_verifier": {**_string, "description": (
            "authorization_code grant: the PKCE verifier (43-128 characters) whose S256 is "
            "the authorization request's code_challenge")},
        "redirect_uri": {**_string, "description": (
            "authorization_code grant: the authorization request's redirect_uri, exactly "
            "(required when that request named one)")},
        "scope": {**_string, "description": "space-separated scopes"},
        "client_id": {**_string, "description": "client_secret_post or public clients"},
        "client_secret": {**_string, "format": "password"},
    },
    ["grant_type"],
)
TOKEN_ARG_FORM = _form_body(
    {
        "token": _string,
        "token_type_hint": {"type": "string", "enum": ["access_token", "refresh_token"]},
        "client_id": _string,
        "client_secret": {**_string, "format": "password"},
    },
    ["token"],
)


TOKEN_PATH = "/oauth/token"  # noqa: S105 (a path, not a secret)

# JSONResponse's own encoding (compact, UTF-8, no NaN), made once.
_TOKEN_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_TOKEN_HEADERS = [(b"content-type", b"application/json"),
                  *((name.lower().encode(), value.encode()) for name, value in NO_STORE.items())]


class TokenJSON(Response):
    """RFC 6749 §5.1's answer: what ``JSONResponse(body, headers=NO_STORE)`` sends, with
    its headers assembled once rather than per response."""

    media_type = "application/json"

    def __init__(self, body: dict[str, Any]) -> None:
        self.status_code = 200
        self.background = None
        self.body = _TOKEN_JSON.encode(body).encode()
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()), *_TOKEN_HEADERS]


@router.post(
    TOKEN_PATH,
    summary=f"Issue tokens ({', '.join(GRANT_TYPES)})",
    description=(
        "**Authorization code flow.** `grant_type=authorization_code` with `code`, "
        "`code_verifier` (PKCE) and `redirect_uri`, from the client the code was issued to; "
        "a code works once, and presented again it revokes what its first use issued.\n\n"
        "**Two-step verification.** For a user with TOTP, `grant_type=password` without "
        "`otp` answers **403** `mfa_required` with an `mfa_token` (only after the right "
        "password). Finish with the same password request plus `otp`, or with "
        "`grant_type=urn:provider:params:oauth:grant-type:mfa-otp`, `mfa_token` and `otp`, "
        "from the same client. `otp` is the app's current code or a recovery code (used "
        "up). An mfa_token lives 5 minutes, is used once, takes 5 codes at most; wrong "
        "codes also count per user (429 `slow_down` with `Retry-After`)."
    ),
    response_model=TokenResponse,
    response_model_exclude_none=True,
    responses={**oauth_errors(400, 401, 429, 503),
               403: {"model": MfaRequiredBody,
                     "description": "mfa_required: the password was right; finish with otp "
                                    "(or the mfa-otp grant and this mfa_token)"}},
    openapi_extra=TOKEN_FORM,
)
async def token(request: Request) -> Response:
    # The hot path: services straight from the app state, no dependency solving.
    services: Services = request.app.state.services
    form = await read_form(request)
    grant_type = require(form, "grant_type")
    grant = GRANTS.get(grant_type)
    address = client_address(request, services.settings)
    auth = await authenticate_client(
        services.clients, form, request.headers.get("authorization"),
        throttles=services.throttles, address=address,
    )
    note_client(auth.client.client_id)
    if grant is None:
        raise UnsupportedGrantType()
    if CLIENT_GRANT_TYPE[grant_type] not in auth.client.grant_types:
        raise UnauthorizedClient()
    token_request = TokenRequest(form, address, request.headers.get("user-agent"))
    try:
        body = await grant.exchange(services, token_request, auth.client)
    except IntegrityError as exc:
        if not is_foreign_key_violation(exc):
            raise
        # The client was deleted by another process (the CLI, another worker) since this
        # one's cache read it: its session, code or mfa_token has no client row to name.
        services.clients.invalidate(auth.client.client_id)
        raise InvalidClient(used_basic=auth.used_basic) from None
    count_tokens_issued(grant_type)
    return TokenJSON(body)


@router.post(
    "/oauth/revoke",
    summary="Revoke a refresh or access token (RFC 7009)",
    responses={200: {"description": "Revoked, or the token was not valid"},
               **oauth_errors(400, 401, 429, 503)},
    openapi_extra=TOKEN_ARG_FORM,
)
async def revocation(request: Request, services: ServicesDep) -> Response:
    form = await read_form(request)
    auth = await authenticate_client(
        services.clients, form, request.headers.get("authorization"),
        throttles=services.throttles, address=client_address(request, services.settings),
    )
    note_client(auth.client.client_id)
    token_value = require(form, "token")
    await revoke(services, auth.client, token_value, form.get("token_type_hint"),
                 request_context(request, services.settings))
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/oauth/introspect",
    summary="Introspect a token (RFC 7662; any confidential client, e.g. a resource server)",
    response_model=IntrospectionResponse,
    response_model_exclude_none=True,
    responses=oauth_errors(400, 401, 429, 503),
    openapi_extra=TOKEN_ARG_FORM,
)
async def introspection(request: Request, services: ServicesDep) -> Response:
    form = await read_form(request)
    auth = await authenticate_client(
        services.clients, form, request.headers.get("authorization"),
        throttles=services.throttles, address=client_address(request, services.settings),
    )
    note_client(auth.client.client_id)
    if auth.client.is_public:
        # RFC 7662 §2.1: the endpoint must be protected; a public client proves nothing.
        raise InvalidClient("Public clients may not introspect tokens.",
                            used_basic=auth.used_basic)
    token_value = require(form, "token")
    body = await introspect(services, token_value, form.get("token_type_hint"))
    return JSONResponse(body, headers=NO_STORE)


def _userinfo(claims: ClaimsDep, user: CurrentUser) -> UserInfo:
    return UserInfo(**userinfo_claims(claims.scope, user))


_userinfo_doc: dict[str, Any] = {
    "summary": "OpenID Connect userinfo for a bearer access token with scope openid",
    "response_model": UserInfo,
    "response_model_exclude_none": True,
    "responses": USERINFO_ERRORS,
}


@router.get("/oauth/userinfo", **_userinfo_doc)
async def userinfo_get(claims: ClaimsDep, user: CurrentUser) -> UserInfo:
    return _userinfo(claims, user)


@router.post("/oauth/userinfo", **_userinfo_doc)
async def userinfo_post(claims: ClaimsDep, user: CurrentUser) -> UserInfo:
    return _userinfo(claims, user)


def _json(document: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(json.dumps(document), media_type="application/json", headers=headers)


@router.get(
    "/.well-known/openid-configuration",
    summary="OpenID Connect discovery",
    response_model=dict[str, Any],
)
async def discovery(services: ServicesDep) -> Response:
    return _json(openid_configuration(services.settings, services.signing_algorithms()),
                 METADATA_CACHE)


@router.get(
    "/.well-known/oauth-authorization-server",
    summary="OAuth 2.0 authorization server metadata (RFC 8414)",
    response_model=dict[str, Any],
)
async def oauth_metadata(services: ServicesDep) -> Response:
    return _json(authorization_server_metadata(services.settings), METADATA_CACHE)


JWKS_PATH = "/.well-known/jwks.json"


@router.get(
    JWKS_PATH,
    summary="Public signing keys (JWKS)",
    response_model=dict[str, Any],
)
async def jwks(request: Request) -> Response:
    # No dependencies on purpose: the most requested document, pre-serialised.
    services: Services = request.app.state.services
    return Response(
        services.keys.jwks_json(), media_type="application/json",
        headers=services.jwks_headers,
    )
