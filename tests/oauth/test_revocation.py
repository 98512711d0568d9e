"""POST /oauth/revoke (RFC 7009)."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import Factory
from tests.helpers import assert_no_store, assert_oauth_error, login, refresh
from tests.oauth.helpers import (
    BASIC_CHALLENGE,
    assert_invalid_token,
    assert_refresh_refused,
    basic,
    me,
)

REVOKE = "/oauth/revoke"
INTROSPECT = "/oauth/introspect"


def assert_revoked_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.content == b""
    assert_no_store(response)


async def test_revoke_refresh_token_ends_the_family(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    response = await client.post(REVOKE, data={"token": tokens["refresh_token"],
                                                "token_type_hint": "refresh_token"},
                                 auth=oauth.auth)
    assert_revoked_ok(response)
    assert_refresh_refused(await refresh(client, oauth, tokens["refresh_token"]))
    # RFC 7009 §2.1: revoking the refresh token also ends the grant's access tokens.
    assert_invalid_token(await me(client, tokens["access_token"]))
    introspection = await client.post(INTROSPECT, data={"token": tokens["access_token"]},
                                      auth=oauth.auth)
    assert introspection.json() == {"active": False}


async def test_revoke_rotated_refresh_token_ends_the_family(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(client, oauth, user)
    second = (await refresh(client, oauth, first["refresh_token"])).json()
    assert_revoked_ok(await client.post(REVOKE, data={"token": first["refresh_token"]},
                                        auth=oauth.auth))
    assert_refresh_refused(await refresh(client, oauth, second["refresh_token"]))
    assert_invalid_token(await me(client, second["access_token"]))


async def test_revoke_access_token_leaves_the_refresh_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    sibling = await login(client, oauth, user)
    response = await client.post(REVOKE, data={"token": tokens["access_token"],
                                                "token_type_hint": "access_token"},
                                 auth=oauth.auth)
    assert_revoked_ok(response)
    assert_invalid_token(await me(client, tokens["access_token"]))
    # Only that one access token: its refresh token and other sessions live on.
    refreshed = await refresh(client, oauth, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert (await me(client, refreshed.json()["access_token"])).status_code == 200
    assert (await me(client, sibling["access_token"])).status_code == 200


async def test_revoke_access_token_twice_is_fine(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    for _ in range(2):
        assert_revoked_ok(await client.post(REVOKE, data={"token": tokens["access_token"]},
                                            auth=oauth.auth))


async def test_revoke_client_credentials_token(client, factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    token = (await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=oauth.auth)).json()["access_token"]
    before = await client.post(INTROSPECT, data={"token": token}, auth=oauth.auth)
    assert before.json()["active"] is True
    assert_revoked_ok(await client.post(REVOKE, data={"token": token}, auth=oauth.auth))
    after = await client.post(INTROSPECT, data={"token": token}, auth=oauth.auth)
    assert after.json() == {"active": False}


@pytest.mark.parametrize("token", ["unknown", "a.b.c", "x" * 1000, "eyJhbGciOiJub25lIn0.e30."])
async def test_revoke_unknown_or_invalid_token_is_200(
    client, factory: Factory, token: str
) -> None:
    oauth = await factory.client()
    assert_revoked_ok(await client.post(REVOKE, data={"token": token}, auth=oauth.auth))


async def test_revoke_another_clients_tokens_is_200_and_changes_nothing(
    client, factory: Factory
) -> None:
    user = await factory.user()
    owner, other = await factory.client(), await factory.client()
    tokens = await login(client, owner, user)
    for kind in ("refresh_token", "access_token"):
        assert_revoked_ok(await client.post(REVOKE, data={"token": tokens[kind]},
                                            auth=other.auth))
    assert (await me(client, tokens["access_token"])).status_code == 200
    assert (await refresh(client, owner, tokens["refresh_token"])).status_code == 200


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "bogus"])
async def test_revoke_with_any_hint_still_finds_the_token(
    client, factory: Factory, hint: str
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    rt_tokens = await login(client, oauth, user)
    # A wrong or unknown hint only orders the search (RFC 7009 §2.1).
    assert_revoked_ok(await client.post(
        REVOKE, data={"token": tokens["access_token"], "token_type_hint": hint},
        auth=oauth.auth))
    assert_invalid_token(await me(client, tokens["access_token"]))
    assert_revoked_ok(await client.post(
        REVOKE, data={"token": rt_tokens["refresh_token"], "token_type_hint": hint},
        auth=oauth.auth))
    assert_refresh_refused(await refresh(client, oauth, rt_tokens["refresh_token"]))


async def test_public_client_revokes_its_own_refresh_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client(public=True)
    response = await client.post("/oauth/token", data={
        "grant_type": "password", "client_id": oauth.client_id, "username": user.email,
        "password": user.password,
    })
    tokens = response.json()
    assert_revoked_ok(await client.post(REVOKE, data={"token": tokens["refresh_token"],
                                                      "client_id": oauth.client_id}))
    assert_refresh_refused(await refresh(client, oauth, tokens["refresh_token"]))


async def test_revoke_without_token_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(REVOKE, data={"token_type_hint": "access_token"},
                                 auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", "The token parameter is required.")


async def test_revoke_without_client_auth_is_401(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    response = await client.post(REVOKE, data={"token": tokens["refresh_token"]})
    assert_oauth_error(response, 401, "invalid_client", "Client authentication is required.")
    assert (await refresh(client, oauth, tokens["refresh_token"])).status_code == 200


async def test_revoke_with_wrong_secret_is_401_and_changes_nothing(
    client, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    response = await client.post(REVOKE, data={"token": tokens["refresh_token"]},
                                 headers=basic(oauth.client_id, "wrong"))
    assert_oauth_error(response, 401, "invalid_client", "Client authentication failed.",
                       www_authenticate=BASIC_CHALLENGE)
    assert (await refresh(client, oauth, tokens["refresh_token"])).status_code == 200


async def test_revoke_refuses_query_and_json(client, factory: Factory) -> None:
    oauth = await factory.client()
    in_query = await client.post(REVOKE, params={"token": "x"}, data={"token": "x"},
                                 auth=oauth.auth)
    assert_oauth_error(in_query, 400, "invalid_request",
                       "Parameters must be sent in the request body, not the query.")
    as_json = await client.post(REVOKE, json={"token": "x"}, auth=oauth.auth)
    assert_oauth_error(as_json, 400, "invalid_request",
                       "The request body must be application/x-www-form-urlencoded.")
