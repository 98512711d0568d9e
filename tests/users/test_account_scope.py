"""The account API (/users/me...) needs the `account` scope: a token an app got to read
who the user is (openid, profile, email) cannot change the account, its password or its
second factor (ASVS 10.4.11; RFC 6750 §3.1), and a refused request changes nothing."""

from __future__ import annotations

from fastapi import FastAPI

from tests.factories import Factory
from tests.helpers import bearer, login

BODIES = {  # a body each route would accept from a token with the scope
    ("PATCH", "/users/me"): {"username": "renamed-by-app", "profile": {"x": 1}},
    ("POST", "/users/me/password"): {"current_password": "{password}",
                                     "new_password": "A-New-Long-Passphrase-91"},
    ("DELETE", "/users/me"): {"password": "{password}"},
    ("POST", "/users/me/email/confirm"): {"code": "123456"},
    ("POST", "/users/me/mfa/totp/confirm"): {"code": "123456"},
    ("POST", "/users/me/mfa/recovery-codes"): {"code": "123456"},
    ("DELETE", "/users/me/mfa/totp"): {"code": "123456"},
}


def account_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every operation of the account API, read from the app's OpenAPI document (a new
    one is covered too)."""
    return sorted((method.upper(), path) for path, item in app.openapi()["paths"].items()
                  if path.startswith("/users/me") for method in item)


async def test_every_account_route_refuses_a_token_without_the_account_scope(
        app: FastAPI, client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    narrow = await login(client, oauth, user, scope="openid profile email")
    wide = await login(client, oauth, user)  # the client's scopes: account among them
    assert "account" not in narrow["scope"].split()
    assert "account" in wide["scope"].split()
    before = (await client.get("/users/me", headers=bearer(wide["access_token"]))).json()

    routes = account_routes(app)
    assert len(routes) >= 11, routes
    for method, path in routes:
        path = path.replace("{client_id}", oauth.client_id)
        body = {k: v.replace("{password}", user.password) if isinstance(v, str) else v
                for k, v in BODIES.get((method, path), {}).items()} or None
        response = await client.request(method, path, json=body,
                                        headers=bearer(narrow["access_token"]))
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"] == "insufficient_scope"
        assert response.headers["www-authenticate"] == (
            'Bearer realm="provider", error="insufficient_scope", scope="account"')

    # Nothing changed: the same account, the same password, still active, no second factor.
    after = await client.get("/users/me", headers=bearer(wide["access_token"]))
    assert after.status_code == 200 and after.json() == before
    assert (await login(client, oauth, user))["access_token"]


async def test_a_refused_scope_is_not_taken_for_an_invalid_token(client,
                                                                  factory: Factory) -> None:
    """A token without `account` still reads the user through userinfo, which needs only
    `openid`; and a token with `account` alone (no openid) manages the account."""
    user, oauth = await factory.user(), await factory.client()
    narrow = await login(client, oauth, user, scope="openid email")
    info = await client.get("/oauth/userinfo", headers=bearer(narrow["access_token"]))
    assert info.status_code == 200 and info.json()["email"] == user.email
    only_account = await login(client, oauth, user, scope="account")
    me = await client.get("/users/me", headers=bearer(only_account["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == user.email
