"""grant_type=client_credentials (RFC 6749 §4.4): the client acting for itself."""

from __future__ import annotations

import jwt as pyjwt
import pytest

from provider.clients.models import Client
from provider.clients.service import create_client
from provider.errors import ValidationFailed
from provider.oauth.grants import CLIENT_GRANT_RULES
from provider.services import Services
from provider.settings import Settings
from tests.factories import Factory
from tests.helpers import TOKEN, assert_no_store, assert_oauth_error
from tests.oauth.helpers import assert_invalid_token, me, unverified

CC = {"grant_type": "client_credentials"}


async def machine(factory: Factory, scopes: str = "reports:read reports:write openid"):
    return await factory.client(grants=("client_credentials",), scopes=scopes)


async def test_client_credentials_success_shape(
    client, factory: Factory, settings: Settings
) -> None:
    oauth = await machine(factory)
    response = await client.post(TOKEN, data=CC, auth=oauth.auth)
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    # No refresh token (§4.4.3) and no ID token: there is no user.
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    # The default is the client's allowed scopes that make sense without a user.
    assert body["scope"] == "reports:read reports:write"

    header, claims = unverified(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == oauth.client_id
    assert claims["client_id"] == oauth.client_id
    assert claims["aud"] == settings.token_audience
    assert claims["iss"] == settings.issuer
    assert claims["exp"] - claims["iat"] == 900
    assert "sid" not in claims
    assert "auth_time" not in claims


async def test_client_credentials_token_verifies_with_the_jwks(
    client, factory: Factory, settings: Settings
) -> None:
    oauth = await machine(factory)
    token = (await client.post(TOKEN, data=CC, auth=oauth.auth)).json()["access_token"]
    keys = {k["kid"]: k for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    claims = pyjwt.decode(token, pyjwt.PyJWK(keys[unverified(token)[0]["kid"]]),
                          algorithms=["RS256"], audience=settings.token_audience,
                          issuer=settings.issuer)
    assert claims["sub"] == oauth.client_id


async def test_client_credentials_narrower_scope(client, factory: Factory) -> None:
    oauth = await machine(factory)
    response = await client.post(TOKEN, data={**CC, "scope": "reports:read"}, auth=oauth.auth)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "reports:read"


@pytest.mark.parametrize("scope", ["openid", "reports:read admin", "email", "profile"])
async def test_client_credentials_user_scopes_are_invalid_scope(
    client, factory: Factory, scope: str
) -> None:
    oauth = await machine(factory, scopes="reports:read openid profile email admin")
    response = await client.post(TOKEN, data={**CC, "scope": scope}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_scope",
                       "User scopes cannot be granted to a client acting for itself.")


async def test_client_credentials_scope_not_allowed_is_invalid_scope(
    client, factory: Factory
) -> None:
    oauth = await machine(factory)
    response = await client.post(TOKEN, data={**CC, "scope": "billing:read"}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_scope", "Scope not allowed: billing:read.")


@pytest.mark.parametrize("scope", ["r\u00e9ports", "a\x7fb", 'say"hi', "x" * 65])
async def test_a_scope_that_is_no_scope_token_is_not_echoed(client, factory: Factory,
                                                            scope: str) -> None:
    """RFC 6749 §5.2: error_description is printable ASCII (§3.3's scope tokens are)."""
    oauth = await machine(factory)
    response = await client.post(TOKEN, data={**CC, "scope": scope}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_scope", "Scope not allowed.")


async def test_public_client_cannot_be_given_client_credentials(services: Services) -> None:
    async with services.sessions() as session:
        with pytest.raises(ValidationFailed) as caught:
            await create_client(session, name="spa", grant_types=["client_credentials"],
                                scopes=["reports:read"], is_public=True,
                                now=services.clock.now(), grant_rules=CLIENT_GRANT_RULES)
    assert caught.value.detail == "a public client cannot use client_credentials"


async def test_public_client_with_client_credentials_in_db_is_unauthorized_client(
    client, factory: Factory, services: Services
) -> None:
    # Defence in depth: even a row edited by hand cannot mint client tokens without a secret.
    oauth = await factory.client(public=True)
    async with services.sessions() as session:
        row = await session.get(Client, oauth.client_id)
        assert row is not None
        row.grant_types = ["password", "client_credentials"]
        await session.commit()
    services.clients.invalidate(oauth.client_id)
    response = await client.post(TOKEN, data={**CC, "client_id": oauth.client_id})
    assert_oauth_error(response, 400, "unauthorized_client",
                       "A public client cannot use client_credentials.")


async def test_client_token_is_refused_where_a_user_is_needed(
    client, factory: Factory
) -> None:
    oauth = await machine(factory)
    token = (await client.post(TOKEN, data=CC, auth=oauth.auth)).json()["access_token"]
    assert_invalid_token(await me(client, token),
                         "The access token does not represent a user.")
    userinfo = await client.get("/oauth/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert_invalid_token(userinfo, "The access token does not represent a user.")
