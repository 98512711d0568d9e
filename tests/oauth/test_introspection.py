"""POST /oauth/introspect (RFC 7662): any confidential client (a resource server) may
introspect any token; public clients never."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from provider.services import Services
from provider.settings import Settings
from tests.conftest import TestClock as MovableClock
from tests.factories import Factory
from tests.helpers import TOKEN, assert_no_store, assert_oauth_error, login, refresh
from tests.oauth.helpers import BASIC_CHALLENGE, basic, unverified

INTROSPECT = "/oauth/introspect"
INACTIVE = {"active": False}


async def introspect(http: httpx.AsyncClient, oauth, token: str, **form: str) -> dict:
    response = await http.post(INTROSPECT, data={"token": token, **form}, auth=oauth.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert_no_store(response)
    body: dict = response.json()
    return body


async def test_active_access_token(client, factory: Factory, settings: Settings) -> None:
    name = f"intro-{factory.services.clock.now().microsecond}"
    user = await factory.user(username=name)
    oauth = await factory.client()
    tokens = await login(client, oauth, user, scope="profile openid")
    claims = unverified(tokens["access_token"])[1]
    body = await introspect(client, oauth, tokens["access_token"])
    assert body == {
        "active": True,
        "token_type": "Bearer",
        "scope": "openid profile",
        "client_id": oauth.client_id,
        "sub": user.id,
        "aud": settings.token_audience,
        "iss": settings.issuer,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "username": name,
    }


async def test_introspection_shows_no_identity_beyond_the_tokens_scope(
    client, factory: Factory
) -> None:
    user = await factory.user(username=f"who-{factory.services.clock.now().microsecond}")
    oauth = await factory.client()
    bare = await login(client, oauth, user, scope="openid")
    body = await introspect(client, oauth, bare["access_token"], token_type_hint="access_token")
    assert body["active"] is True
    # No email as username, no email, no username: the token grants neither.
    assert "username" not in body and "email" not in body
    refresh_body = await introspect(client, oauth, bare["refresh_token"])
    assert refresh_body["active"] is True
    assert "username" not in refresh_body and "email" not in refresh_body

    with_email = await login(client, oauth, user, scope="openid email")
    body = await introspect(client, oauth, with_email["access_token"])
    assert body["email"] == user.email
    assert "username" not in body
    with_profile = await login(client, oauth, user, scope="profile")
    body = await introspect(client, oauth, with_profile["access_token"])
    assert body["username"] == user.username
    assert "email" not in body


async def test_active_client_credentials_token(client, factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    token = (await client.post(TOKEN, data={"grant_type": "client_credentials"},
                               auth=oauth.auth)).json()["access_token"]
    body = await introspect(client, oauth, token)
    assert body["active"] is True
    assert body["sub"] == oauth.client_id
    assert body["client_id"] == oauth.client_id
    assert body["scope"] == "reports:read"
    assert "username" not in body


async def test_active_refresh_token(
    client, factory: Factory, services: Services, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    before = int(services.clock.now().timestamp())
    tokens = await login(client, oauth, user, scope="openid email")
    body = await introspect(client, oauth, tokens["refresh_token"],
                            token_type_hint="refresh_token")
    assert set(body) == {"active", "token_type", "scope", "client_id", "sub", "iss", "exp",
                         "iat", "email"}
    assert body["email"] == user.email  # under the `email` scope
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    assert body["scope"] == "openid email"
    assert body["client_id"] == oauth.client_id
    assert body["sub"] == user.id
    assert body["iss"] == settings.issuer
    assert before <= body["iat"] <= before + 5
    assert body["exp"] - body["iat"] == int(settings.refresh_token_ttl.total_seconds())


async def test_a_refresh_tokens_scope_is_what_a_refresh_would_grant_now(
    client, factory: Factory
) -> None:
    """DESIGN: a refresh grants the family's scope ∩ what the client and the user may have
    now; introspection says the same, and shows identity only under what remains."""
    user = await factory.user(is_admin=True)
    oauth = await factory.client()
    tokens = await login(client, oauth, user, scope="openid email admin")
    body = await introspect(client, oauth, tokens["refresh_token"])
    assert (body["scope"], body["email"]) == ("openid email admin", user.email)
    await factory.set_user(user.id, is_admin=False)
    await factory.set_client(oauth.client_id, scopes=["openid", "profile"])
    body = await introspect(client, oauth, tokens["refresh_token"])
    assert body["active"] is True
    assert body["scope"] == "openid"
    assert "email" not in body
    refreshed = await refresh(client, oauth, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == "openid"


async def test_a_refresh_token_its_client_may_no_longer_use_is_inactive(
    client, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await factory.set_client(oauth.client_id, grant_types=["password"])
    refused = await refresh(client, oauth, tokens["refresh_token"])
    assert_oauth_error(refused, 400, "unauthorized_client",
                       "The client is not allowed to use this grant type.")
    assert await introspect(client, oauth, tokens["refresh_token"]) == INACTIVE
    await factory.set_client(oauth.client_id, grant_types=["password", "refresh_token"])
    assert (await introspect(client, oauth, tokens["refresh_token"]))["active"] is True


async def test_an_access_tokens_admin_shows_only_while_its_user_is_an_admin(
    client, factory: Factory
) -> None:
    """The admin API refuses a demoted admin's access token at once; introspection tells a
    resource server the same, and the token's other scopes stand until it expires."""
    user = await factory.user(is_admin=True)
    oauth = await factory.client()
    tokens = await login(client, oauth, user, scope="openid email admin")
    access = tokens["access_token"]
    body = await introspect(client, oauth, access)
    assert (body["active"], body["scope"]) == (True, "admin email openid")
    await factory.set_user(user.id, is_admin=False)
    body = await introspect(client, oauth, access)
    assert body["active"] is True
    assert body["scope"] == "email openid"
    assert body["email"] == user.email
    admin_call = await client.get("/admin/users",
                                  headers={"Authorization": f"Bearer {access}"})
    assert admin_call.status_code == 403, admin_call.text
    await factory.set_user(user.id, is_admin=True)
    body = await introspect(client, oauth, access)
    assert body["scope"] == "admin email openid"


async def test_hint_does_not_matter(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    for hint in ("refresh_token", "bogus"):
        body = await introspect(client, oauth, tokens["access_token"], token_type_hint=hint)
        assert body["active"] is True
    body = await introspect(client, oauth, tokens["refresh_token"],
                            token_type_hint="access_token")
    assert body["active"] is True


async def test_revoked_tokens_are_inactive(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await client.post("/oauth/revoke", data={"token": tokens["refresh_token"]},
                      auth=oauth.auth)
    assert await introspect(client, oauth, tokens["refresh_token"]) == INACTIVE
    assert await introspect(client, oauth, tokens["access_token"]) == INACTIVE


async def test_revoked_access_token_is_inactive(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await client.post("/oauth/revoke", data={"token": tokens["access_token"]},
                      auth=oauth.auth)
    assert await introspect(client, oauth, tokens["access_token"]) == INACTIVE
    assert (await introspect(client, oauth, tokens["refresh_token"]))["active"] is True


async def test_expired_tokens_are_inactive(
    client, factory: Factory, clock: MovableClock, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    clock.advance(settings.access_token_ttl)
    assert await introspect(client, oauth, tokens["access_token"]) == INACTIVE
    assert (await introspect(client, oauth, tokens["refresh_token"]))["active"] is True
    clock.advance(settings.refresh_token_ttl)
    assert await introspect(client, oauth, tokens["refresh_token"]) == INACTIVE


async def test_rotated_refresh_token_is_inactive(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    second = (await refresh(client, oauth, tokens["refresh_token"])).json()
    assert await introspect(client, oauth, tokens["refresh_token"]) == INACTIVE
    # Introspecting a rotated token is not a reuse: the family lives on.
    assert (await introspect(client, oauth, second["refresh_token"]))["active"] is True


async def test_disabled_users_tokens_are_inactive(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await factory.set_user(user.id, is_active=False)
    assert await introspect(client, oauth, tokens["access_token"]) == INACTIVE
    assert await introspect(client, oauth, tokens["refresh_token"]) == INACTIVE


async def test_a_resource_server_introspects_other_clients_access_tokens(
    client, factory: Factory, settings: Settings
) -> None:
    user = await factory.user()
    owner = await factory.client()
    # A resource server: a confidential client of its own, with no grant to speak of.
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    tokens = await login(client, owner, user, scope="openid email")
    claims = unverified(tokens["access_token"])[1]
    body = await introspect(client, resource_server, tokens["access_token"])
    assert body == {
        "active": True, "token_type": "Bearer", "scope": "email openid",
        "client_id": owner.client_id, "sub": user.id, "aud": settings.token_audience,
        "iss": settings.issuer, "exp": claims["exp"], "iat": claims["iat"],
        "jti": claims["jti"], "email": user.email,
    }
    # Any token: a refresh token too (DESIGN.md), and looking does not consume it.
    refresh_body = await introspect(client, resource_server, tokens["refresh_token"])
    assert refresh_body["active"] is True
    assert refresh_body["client_id"] == owner.client_id
    assert (await introspect(client, owner, tokens["refresh_token"]))["active"] is True

    # Once the session is revoked, the resource server is told so.
    revoked = await client.post("/oauth/revoke", auth=owner.auth,
                                data={"token": tokens["refresh_token"]})
    assert revoked.status_code == 200
    assert await introspect(client, resource_server, tokens["access_token"]) == INACTIVE


async def test_an_inactive_client_may_not_introspect(client, factory: Factory) -> None:
    user, owner = await factory.user(), await factory.client()
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    tokens = await login(client, owner, user)
    await factory.set_client(resource_server.client_id, is_active=False)
    response = await client.post(INTROSPECT, data={"token": tokens["access_token"]},
                                 auth=resource_server.auth)
    assert_oauth_error(response, 401, "invalid_client", "Client authentication failed.",
                       www_authenticate=BASIC_CHALLENGE)


async def test_id_token_is_not_an_active_access_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid")
    assert await introspect(client, oauth, tokens["id_token"]) == INACTIVE


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 5000, "..", "é"])
async def test_garbage_is_inactive(client, factory: Factory, token: str) -> None:
    oauth = await factory.client()
    assert await introspect(client, oauth, token) == INACTIVE


async def test_public_client_may_not_introspect(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client(public=True)
    tokens = (await client.post(TOKEN, data={
        "grant_type": "password", "client_id": oauth.client_id, "username": user.email,
        "password": user.password,
    })).json()
    response = await client.post(INTROSPECT, data={"token": tokens["access_token"],
                                                   "client_id": oauth.client_id})
    assert_oauth_error(response, 401, "invalid_client",
                       "Public clients may not introspect tokens.")
    # Identified with the Authorization header (an empty password): the Basic challenge.
    with_basic = await client.post(INTROSPECT, data={"token": tokens["access_token"]},
                                   headers=basic(oauth.client_id, ""))
    assert_oauth_error(with_basic, 401, "invalid_client",
                       "Public clients may not introspect tokens.",
                       www_authenticate=BASIC_CHALLENGE)


async def test_bad_credentials_are_401(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    wrong = await client.post(INTROSPECT, data={"token": tokens["access_token"]},
                              headers=basic(oauth.client_id, "wrong"))
    assert_oauth_error(wrong, 401, "invalid_client", "Client authentication failed.",
                       www_authenticate=BASIC_CHALLENGE)
    wrong_post = await client.post(INTROSPECT, data={
        "token": tokens["access_token"], "client_id": oauth.client_id, "client_secret": "no",
    })
    assert_oauth_error(wrong_post, 401, "invalid_client", "Client authentication failed.")
    anonymous = await client.post(INTROSPECT, data={"token": tokens["access_token"]})
    assert_oauth_error(anonymous, 401, "invalid_client", "Client authentication is required.")


async def test_missing_token_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(INTROSPECT, data={"token_type_hint": "access_token"},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", "The token parameter is required.")


async def test_token_in_query_is_refused(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(INTROSPECT, params={"token": "x"}, data={"token": "x"},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "Parameters must be sent in the request body, not the query.")


async def test_access_token_near_expiry_still_active(
    client, factory: Factory, clock: MovableClock, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    clock.advance(settings.access_token_ttl - timedelta(seconds=5))
    assert (await introspect(client, oauth, tokens["access_token"]))["active"] is True
