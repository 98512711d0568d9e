"""GET/POST /oauth/userinfo (OpenID Connect Core §5.3)."""

from __future__ import annotations

import secrets

import pytest

from tests.factories import Factory
from tests.helpers import assert_oauth_error, bearer, login
from tests.oauth.helpers import assert_invalid_token

USERINFO = "/oauth/userinfo"


async def call(client, method: str, token: str):
    return await client.request(method, USERINFO, headers=bearer(token))


async def profile_user(factory: Factory):
    return await factory.user(username=f"ada-{secrets.token_hex(4)}", name="Ada Lovelace",
                              given_name="Ada", family_name="Lovelace", nickname=42)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo_openid_only_gives_sub(client, factory: Factory, method: str) -> None:
    user, oauth = await profile_user(factory), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    response = await call(client, method, tokens["access_token"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"sub": user.id}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo_email_scope(client, factory: Factory, method: str) -> None:
    user, oauth = await profile_user(factory), await factory.client()
    tokens = await login(client, oauth, user, scope="openid email")
    response = await call(client, method, tokens["access_token"])
    assert response.json() == {"sub": user.id, "email": user.email, "email_verified": True}


async def test_userinfo_email_unverified(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid email")
    await factory.set_user(user.id, is_verified=False)  # e.g. an email change pending
    response = await call(client, "GET", tokens["access_token"])
    assert response.json() == {"sub": user.id, "email": user.email, "email_verified": False}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo_profile_scope(client, factory: Factory, method: str) -> None:
    user, oauth = await profile_user(factory), await factory.client()
    tokens = await login(client, oauth, user, scope="openid profile")
    response = await call(client, method, tokens["access_token"])
    # Only the standard string claims of the profile; nothing else it may hold.
    assert response.json() == {
        "sub": user.id, "preferred_username": user.username, "name": "Ada Lovelace",
        "given_name": "Ada", "family_name": "Lovelace",
    }


async def test_userinfo_all_scopes(client, factory: Factory) -> None:
    user, oauth = await profile_user(factory), await factory.client()
    tokens = await login(client, oauth, user, scope="openid profile email")
    body = (await call(client, "GET", tokens["access_token"])).json()
    assert set(body) == {"sub", "email", "email_verified", "preferred_username", "name",
                         "given_name", "family_name"}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo_without_openid_is_insufficient_scope(
    client, factory: Factory, method: str
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="profile email")
    response = await call(client, method, tokens["access_token"])
    assert_oauth_error(
        response, 403, "insufficient_scope",
        "The access token lacks the scope this resource requires.",
        www_authenticate='Bearer realm="provider", error="insufficient_scope", scope="openid"',
    )


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo_without_token_is_401_bare_challenge(client, method: str) -> None:
    response = await client.request(method, USERINFO)
    assert_oauth_error(response, 401, "invalid_token", "An access token is required.",
                       www_authenticate='Bearer realm="provider"')


async def test_userinfo_token_in_post_body_is_not_read(client, factory: Factory) -> None:
    # Only the Authorization header carries access tokens here (RFC 6750 §2.1).
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    response = await client.post(USERINFO, data={"access_token": tokens["access_token"]})
    assert_oauth_error(response, 401, "invalid_token", "An access token is required.",
                       www_authenticate='Bearer realm="provider"')


async def test_userinfo_token_in_query_is_invalid_request(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    description = "Access tokens are not accepted in the query string."
    response = await client.get(USERINFO, params={"access_token": tokens["access_token"]})
    assert_oauth_error(
        response, 400, "invalid_request", description,
        www_authenticate=(
            f'Bearer realm="provider", error="invalid_request", '
            f'error_description="{description}"'
        ),
    )


async def test_userinfo_with_revoked_token_is_invalid_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    await client.post("/oauth/revoke", data={"token": tokens["access_token"]}, auth=oauth.auth)
    assert_invalid_token(await call(client, "GET", tokens["access_token"]))


async def test_userinfo_for_disabled_user_is_invalid_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    await factory.set_user(user.id, is_active=False)
    assert_invalid_token(await call(client, "POST", tokens["access_token"]))
