"""grant_type=authorization_code (RFC 6749 §4.1.3, RFC 7636 §4.5): PKCE verified, the
client and redirect_uri checked, the code single use (a reuse revokes what it issued),
60 seconds, stored as a digest; ID token with nonce, auth_time, amr and at_hash."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from provider.services import Services
from provider.tokens.models import AuthorizationCode
from tests.conftest import TestClock
from tests.factories import Factory, TestClient, TestUser
from tests.helpers import assert_oauth_error, bearer, refresh
from tests.web.helpers import CALLBACK, Authorization, Browser, exchange

INVALID_CODE = ("The authorization code is invalid, expired, already used, or was issued "
                "to another client or for another redirect_uri or code_verifier.")


def claims(token: str) -> dict[str, Any]:
    # Signatures are verified with the served JWKS in tests/e2e; here the claims matter.
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def code_for(client: httpx.AsyncClient, oauth: TestClient, user: TestUser,
                   request: Authorization | None = None, **overrides: str | None
                   ) -> tuple[Authorization, str]:
    request = request or Authorization(oauth.client_id)
    answer = await Browser(client).sign_in(request, user.email, user.password, **overrides)
    return request, answer["code"]


async def test_code_flow_issues_tokens_with_nonce_auth_time_amr_at_hash(
    client: httpx.AsyncClient, factory: Factory, services: Services
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    response = await exchange(client, request, code, auth=oauth.auth)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token",
                         "id_token"}
    assert body["scope"] == "openid profile email"
    access, identity = claims(body["access_token"]), claims(body["id_token"])
    assert access["sub"] == identity["sub"] == user.id
    assert access["client_id"] == identity["aud"] == oauth.client_id
    assert identity["nonce"] == request.nonce
    assert identity["amr"] == access["amr"] == ["pwd"]
    assert identity["auth_time"] == access["auth_time"]
    digest = hashlib.sha256(body["access_token"].encode()).digest()
    assert identity["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert identity["sid"] == access["sid"]
    me = await client.get("/oauth/userinfo", headers=bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == user.email
    # The refresh token works like any other (and the refreshed ID token keeps auth_time).
    refreshed = await refresh(client, oauth, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert claims(refreshed.json()["id_token"])["auth_time"] == identity["auth_time"]
    # The code is stored as a digest only.
    async with services.sessions() as session:
        digests = (await session.scalars(select(AuthorizationCode.code_hash))).all()
    assert hashlib.sha256(code.encode()).digest() in digests
    assert not any(code.encode() in d for d in digests)


async def test_code_without_nonce_or_openid(client: httpx.AsyncClient, factory: Factory
                                            ) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request = Authorization(oauth.client_id, scope="profile", nonce=None)
    _, code = await code_for(client, oauth, user, request)
    body = (await exchange(client, request, code, auth=oauth.auth)).json()
    assert body["scope"] == "profile"
    assert "id_token" not in body
    request = Authorization(oauth.client_id, nonce=None)
    _, code = await code_for(client, oauth, user, request)
    assert "nonce" not in claims((await exchange(client, request, code,
                                                 auth=oauth.auth)).json()["id_token"])


async def test_public_client_redeems_with_its_client_id_and_verifier(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    app = await factory.code_client(public=True, redirect_uris=("http://127.0.0.1/cb",))
    request = Authorization(app.client_id, redirect_uri="http://127.0.0.1:49152/cb")
    _, code = await code_for(client, app, user, request)
    response = await exchange(client, request, code)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("overrides", "description"), [
    ({"code_verifier": None}, "PKCE is required: send the code_verifier."),
    ({"code_verifier": "short"}, "The code_verifier must be 43 to 128 characters of "
                                 "A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)."),
    ({"code_verifier": "x" * 129}, "The code_verifier must be 43 to 128 characters of "
                                   "A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)."),
])
async def test_missing_or_malformed_verifier_is_invalid_request(
    client: httpx.AsyncClient, factory: Factory, overrides: dict[str, str | None],
    description: str,
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    response = await exchange(client, request, code, auth=oauth.auth, **overrides)
    assert_oauth_error(response, 400, "invalid_request", description)
    # Nothing was used up: the right verifier still works.
    assert (await exchange(client, request, code, auth=oauth.auth)).status_code == 200


@pytest.mark.parametrize("what", ["verifier", "plain", "redirect_uri", "no_redirect_uri",
                                  "client", "code"])
async def test_mismatched_binding_is_invalid_grant_and_leaves_the_code(
    client: httpx.AsyncClient, factory: Factory, what: str
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    other = await factory.code_client()
    request, code = await code_for(client, oauth, user)
    if what == "verifier":
        response = await exchange(client, request, code, auth=oauth.auth,
                                  code_verifier=Authorization("x").verifier)
    elif what == "plain":  # the challenge itself sent as verifier (a "plain" downgrade)
        response = await exchange(client, request, code, auth=oauth.auth,
                                  code_verifier=request.challenge + "AAAA")
    elif what == "redirect_uri":
        response = await exchange(client, request, code, auth=oauth.auth,
                                  redirect_uri=CALLBACK + "/x")
    elif what == "no_redirect_uri":  # the request named one: the token request must too
        response = await exchange(client, request, code, auth=oauth.auth, redirect_uri=None)
    elif what == "client":  # another client presents the code (with the right verifier)
        response = await exchange(client, request, code, auth=other.auth)
    else:
        response = await exchange(client, request, code + "x", auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_grant", INVALID_CODE)
    # A presentation that does not match uses nothing up: the rightful one still works.
    assert (await exchange(client, request, code, auth=oauth.auth)).status_code == 200


async def test_code_used_twice_fails_and_revokes_what_the_first_use_issued(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    first = await exchange(client, request, code, auth=oauth.auth)
    assert first.status_code == 200
    tokens = first.json()
    assert (await client.get("/oauth/userinfo", headers=bearer(tokens["access_token"]))
            ).status_code == 200
    second = await exchange(client, request, code, auth=oauth.auth)
    assert_oauth_error(second, 400, "invalid_grant", INVALID_CODE)
    # RFC 6749 §4.1.2: what the first use issued is revoked.
    me = await client.get("/oauth/userinfo", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert (await refresh(client, oauth, tokens["refresh_token"])).json()["error"] == \
        "invalid_grant"
    introspected = await client.post("/oauth/introspect", auth=oauth.auth,
                                     data={"token": tokens["access_token"]})
    assert introspected.json() == {"active": False}


async def test_code_expires_after_60_seconds(
    client: httpx.AsyncClient, factory: Factory, clock: TestClock
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    clock.advance(timedelta(seconds=60))
    response = await exchange(client, request, code, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_grant", INVALID_CODE)
    clock.reset()
    request, code = await code_for(client, oauth, user)
    clock.advance(timedelta(seconds=59))
    assert (await exchange(client, request, code, auth=oauth.auth)).status_code == 200


async def test_password_change_between_code_and_redemption_kills_the_code(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    await factory.set_user(user.id, session_epoch=99)  # what a password reset does
    response = await exchange(client, request, code, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_grant", INVALID_CODE)


async def test_client_without_the_grant_cannot_redeem(client: httpx.AsyncClient,
                                                      factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    await factory.set_client(oauth.client_id, grant_types=["refresh_token"])
    response = await exchange(client, request, code, auth=oauth.auth)
    assert_oauth_error(response, 400, "unauthorized_client",
                       "The client is not allowed to use this grant type.")


async def test_scope_is_narrowed_to_what_the_client_may_have_now(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    await factory.set_client(oauth.client_id, scopes=["openid", "profile"])
    body = (await exchange(client, request, code, auth=oauth.auth)).json()
    assert body["scope"] == "openid profile"


async def test_admin_scope_only_for_admins(client: httpx.AsyncClient, factory: Factory,
                                           app: FastAPI) -> None:
    oauth = await factory.code_client(first_party=True)
    admin, user = await factory.user(is_admin=True), await factory.user()
    request = Authorization(oauth.client_id, scope="openid admin")
    _, code = await code_for(client, oauth, admin, request)
    assert (await exchange(client, request, code, auth=oauth.auth)).json()["scope"] == \
        "openid admin"
    denied = Authorization(oauth.client_id, scope="openid admin")
    browser = Browser(httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url=str(client.base_url)))  # another browser
    async with browser.http:
        page = await browser.authorize(denied)
        answer = await browser.login(page, user.email, user.password)
        answer = await browser.http.get(answer.headers["location"])
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(CALLBACK + "?error=invalid_scope"), location


async def test_codes_are_bound_to_the_user(client: httpx.AsyncClient, factory: Factory,
                                           services: Services) -> None:
    user, oauth = await factory.user(), await factory.code_client()
    request, code = await code_for(client, oauth, user)
    async with services.sessions() as session:
        row = await session.scalar(select(AuthorizationCode).where(
            AuthorizationCode.code_hash == hashlib.sha256(code.encode()).digest()))
    assert row is not None
    assert row.user_id == uuid.UUID(user.id)
    assert (row.client_id, row.redirect_uri, row.code_challenge, row.nonce) == (
        oauth.client_id, CALLBACK, request.challenge, request.nonce)
    assert row.amr == ["pwd"]
    assert row.expires_at - row.created_at == timedelta(seconds=60)
    assert row.used_at is None
