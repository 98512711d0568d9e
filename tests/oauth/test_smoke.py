"""A first pass over the main path; the detailed suites live beside it."""

from tests.factories import Factory
from tests.helpers import password_login


async def test_password_then_refresh_then_me(client, factory: Factory) -> None:
    user = await factory.user()
    oauth = await factory.client()
    response = await password_login(client, oauth, user, scope="openid email account")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope", "refresh_token",
                         "id_token"}
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == user.email
