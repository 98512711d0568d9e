"""Ending all sessions also ends access tokens of clients without the refresh grant, in
the very second they were issued, and re-entering the current password is throttled
like a login."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx

from provider.app import create_app
from tests.conftest import TestClock as Clock
from tests.conftest import make_settings
from tests.factories import Factory
from tests.helpers import bearer, password_login


def _iat(token: str) -> int:
    payload = token.split(".")[1]
    iat: int = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iat"]
    return iat


async def test_password_change_ends_tokens_without_refresh_issued_the_same_second(
    client: httpx.AsyncClient, factory: Factory, clock: Clock
) -> None:
    user = await factory.user()
    with_refresh = await factory.client()
    access_only = await factory.client(grants=("password",))
    clock.freeze()  # tokens, the change and the next sign-in all in one second
    own = (await password_login(client, with_refresh, user)).json()
    other = (await password_login(client, access_only, user)).json()
    assert "refresh_token" not in other
    assert (await client.get("/users/me", headers=bearer(other["access_token"]))).status_code == 200

    changed = await client.post(
        "/users/me/password", headers=bearer(own["access_token"]),
        json={"current_password": user.password, "new_password": "a brand new passphrase"})
    assert changed.status_code == 204

    gone = await client.get("/users/me", headers=bearer(other["access_token"]))
    assert gone.status_code == 401
    assert gone.json()["error"] == "invalid_token"
    # The caller's own session goes on.
    assert (await client.get("/users/me", headers=bearer(own["access_token"]))).status_code == 200
    # A token issued after the change works, also within that same second.
    user.password = "a brand new passphrase"
    fresh = (await password_login(client, access_only, user)).json()
    assert _iat(fresh["access_token"]) == _iat(other["access_token"])
    assert (await client.get("/users/me", headers=bearer(fresh["access_token"]))).status_code == 200


async def test_wrong_current_password_is_throttled(
    settings_keys: tuple[str, Path], factory: Factory
) -> None:
    database_url, keys_dir = settings_keys
    app = create_app(make_settings(database_url, keys_dir,
                                   login_throttle_account="2 per hour"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            user = await factory.user()
            oauth = await factory.client()
            token = (await password_login(http, oauth, user)).json()["access_token"]
            body = {"current_password": "not my password", "new_password": "whatever it is now"}
            first = await http.post("/users/me/password", headers=bearer(token), json=body)
            second = await http.post("/users/me/password", headers=bearer(token), json=body)
            third = await http.post("/users/me/password", headers=bearer(token),
                                    json={**body, "current_password": user.password})
    assert [first.status_code, second.status_code] == [400, 400]
    assert third.status_code == 429
    assert third.json()["code"] == "rate_limited"
    assert int(third.headers["retry-after"]) > 0
