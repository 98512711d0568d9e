"""Scopes follow permissions at every refresh; a deactivated client's tokens die with it."""

from __future__ import annotations

import httpx

from tests.admin.helpers import Session, admin_login
from tests.factories import Factory
from tests.helpers import bearer, login, refresh
from tests.oauth.helpers import unverified

INACTIVE = {"active": False}


async def introspect(http: httpx.AsyncClient, caller, token: str) -> dict:
    response = await http.post("/oauth/introspect", auth=caller.auth, data={"token": token})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


async def set_admin(http: httpx.AsyncClient, actor: Session, user_id: str, value: bool) -> None:
    response = await http.patch(f"/admin/users/{user_id}", headers=actor.headers,
                                json={"is_admin": value})
    assert response.status_code == 200, response.text


async def test_refresh_drops_admin_once_the_user_is_demoted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    actor = await admin_login(client, factory)
    target = await factory.user(is_admin=True)
    oauth = await factory.client(scopes="openid admin")
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    tokens = await login(client, oauth, target, scope="openid admin")
    assert tokens["scope"] == "openid admin"

    await set_admin(client, actor, target.id, False)
    demoted = (await refresh(client, oauth, tokens["refresh_token"])).json()
    assert demoted["scope"] == "openid"
    assert unverified(demoted["access_token"])[1]["scope"] == "openid"
    assert (await introspect(client, resource_server, demoted["access_token"]))["scope"] == (
        "openid")
    # The token from before the demotion keeps its scope until it expires, but the admin
    # API checks the role itself, so it already opens nothing there.
    old = await client.get("/admin/users", headers=bearer(tokens["access_token"]))
    assert old.status_code == 403, old.text

    # The session's consent is unchanged: promoted again, the next refresh has admin.
    await set_admin(client, actor, target.id, True)
    promoted = (await refresh(client, oauth, demoted["refresh_token"])).json()
    assert promoted["scope"] == "openid admin"


async def test_refresh_drops_a_scope_the_client_lost(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    actor = await admin_login(client, factory)
    user = await factory.user()
    oauth = await factory.client(scopes="openid profile email")
    tokens = await login(client, oauth, user, scope="openid profile email")
    response = await client.patch(f"/admin/clients/{oauth.client_id}", headers=actor.headers,
                                  json={"scopes": ["openid", "email"]})
    assert response.status_code == 200, response.text

    refreshed = (await refresh(client, oauth, tokens["refresh_token"])).json()
    assert refreshed["scope"] == "openid email"
    assert "id_token" in refreshed
    userinfo = await client.get("/oauth/userinfo", headers=bearer(refreshed["access_token"]))
    assert "preferred_username" not in userinfo.json()
    # A narrower request narrows further; asking for the lost scope gets nothing of it.
    narrowed = (await refresh(client, oauth, refreshed["refresh_token"],
                              scope="profile email")).json()
    assert narrowed["scope"] == "email"
    # Never more than the session's scope (RFC 6749 §6), whatever the client may have.
    response = await refresh(client, oauth, narrowed["refresh_token"], scope="openid admin")
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_scope",
                               "error_description": "The requested scope exceeds the "
                                                    "original grant."}
    # That refusal consumed nothing: the token still rotates.
    assert (await refresh(client, oauth, narrowed["refresh_token"])).status_code == 200


async def test_a_deactivated_clients_tokens_are_refused_everywhere(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    actor = await admin_login(client, factory)
    user = await factory.user()
    oauth = await factory.client(scopes="openid profile email account")
    machine = await factory.client(grants=("client_credentials",), scopes="reports:read")
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    tokens = await login(client, oauth, user, scope="openid email account")
    machine_token = (await client.post("/oauth/token", auth=machine.auth, data={
        "grant_type": "client_credentials"})).json()["access_token"]
    assert (await introspect(client, resource_server, machine_token))["active"] is True
    assert (await client.get("/users/me", headers=bearer(tokens["access_token"]))).status_code \
        == 200

    for target in (oauth, machine):
        response = await client.patch(f"/admin/clients/{target.client_id}",
                                      headers=actor.headers, json={"is_active": False})
        assert response.status_code == 200, response.text

    for path in ("/users/me", "/oauth/userinfo"):
        response = await client.get(path, headers=bearer(tokens["access_token"]))
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == "invalid_token"
    for token in (tokens["access_token"], tokens["refresh_token"], machine_token):
        assert await introspect(client, resource_server, token) == INACTIVE


async def test_reactivating_a_client_revives_none_of_its_old_tokens(
    client: httpx.AsyncClient, factory: Factory, clock
) -> None:
    from datetime import timedelta

    actor = await admin_login(client, factory)
    user = await factory.user()
    oauth = await factory.client(grants=("password", "refresh_token", "client_credentials"),
                                 scopes="openid account reports:read")
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    tokens = await login(client, oauth, user, scope="openid account")
    own = (await client.post("/oauth/token", auth=oauth.auth, data={
        "grant_type": "client_credentials"})).json()["access_token"]

    async def set_active(value: bool) -> None:
        response = await client.patch(f"/admin/clients/{oauth.client_id}",
                                      headers=actor.headers, json={"is_active": value})
        assert response.status_code == 200, response.text

    await set_active(False)
    clock.advance(timedelta(seconds=1))  # the reactivation comes a second later
    await set_active(True)
    for token in (own, tokens["access_token"], tokens["refresh_token"]):
        assert await introspect(client, resource_server, token) == INACTIVE
    assert (await client.get("/users/me", headers=bearer(tokens["access_token"]))).status_code \
        == 401
    # Tokens issued after the reactivation work, in its very second too.
    fresh = (await client.post("/oauth/token", auth=oauth.auth, data={
        "grant_type": "client_credentials"})).json()["access_token"]
    assert (await introspect(client, resource_server, fresh))["active"] is True
    signed_in = await login(client, oauth, user, scope="openid account")
    assert (await client.get("/users/me", headers=bearer(signed_in["access_token"]))
            ).status_code == 200


async def test_a_reactivation_in_the_second_of_the_deactivation_revives_no_token(
    client: httpx.AsyncClient, factory: Factory, clock
) -> None:
    """A client's own token carries a whole-second `iat`: one issued before a deactivation
    and a reactivation that both fall in its second stays dead; sessions started after
    the reactivation are not touched."""
    from datetime import UTC, datetime, timedelta

    actor = await admin_login(client, factory)
    user = await factory.user()
    oauth = await factory.client(grants=("password", "refresh_token", "client_credentials"),
                                 scopes="openid account reports:read")
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    second = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    clock.freeze(second + timedelta(milliseconds=100))

    async def set_active(value: bool) -> None:
        response = await client.patch(f"/admin/clients/{oauth.client_id}",
                                      headers=actor.headers, json={"is_active": value})
        assert response.status_code == 200, response.text

    async def client_token() -> str:
        response = await client.post("/oauth/token", auth=oauth.auth,
                                     data={"grant_type": "client_credentials"})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    own = await client_token()
    clock.advance(timedelta(milliseconds=200))
    await set_active(False)
    clock.advance(timedelta(milliseconds=300))
    await set_active(True)
    assert await introspect(client, resource_server, own) == INACTIVE
    # A user's sign-in right after the reactivation, in the same second, works: the rule
    # is the client's own tokens'.
    signed_in = await login(client, oauth, user, scope="openid account")
    assert (await client.get("/users/me", headers=bearer(signed_in["access_token"]))
            ).status_code == 200
    # From the next second, the client's own tokens work again.
    clock.advance(timedelta(seconds=1))
    assert (await introspect(client, resource_server, await client_token()))["active"] is True
