"""GET /users/me: the bearer's own account, never a secret; and the session it runs in."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event, select

from provider.deps import get_session
from provider.oauth.errors import InvalidToken
from provider.services import Services
from provider.tokens.models import RevokedAccessToken
from tests.factories import Factory
from tests.helpers import login
from tests.oauth.helpers import assert_invalid_token, me

DOCUMENTED = {"id", "email", "username", "is_verified", "mfa_enabled", "created_at"}
SECRET_WORDS = ("password", "hash", "secret", "totp", "recovery")


async def test_me_returns_the_documented_fields(client, factory: Factory) -> None:
    name = f"grace-{secrets.token_hex(4)}"
    user, oauth = await factory.user(username=name), await factory.client()
    tokens = await login(client, oauth, user)
    response = await me(client, tokens["access_token"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert DOCUMENTED <= set(body)
    assert body["id"] == user.id
    assert body["email"] == user.email
    assert body["username"] == name
    assert body["is_verified"] is True
    assert body["mfa_enabled"] is False
    datetime.fromisoformat(body["created_at"])


async def test_me_never_shows_a_hash_or_secret(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    response = await me(client, tokens["access_token"])
    for key in response.json():
        assert not any(word in key for word in SECRET_WORDS), key
    assert "$argon2" not in response.text
    assert user.password not in response.text


async def test_me_for_disabled_user_is_401(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await factory.set_user(user.id, is_active=False)
    assert_invalid_token(await me(client, tokens["access_token"]))


async def test_me_without_token_is_401(client) -> None:
    response = await client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="provider"'


async def test_me_for_client_credentials_token_is_401(client, factory: Factory) -> None:
    oauth = await factory.client(grants=("client_credentials",), scopes="reports:read")
    token = (await client.post("/oauth/token", data={"grant_type": "client_credentials"},
                               auth=oauth.auth)).json()["access_token"]
    assert_invalid_token(await me(client, token), "The access token does not represent a user.")


async def test_session_dependency_commits_on_expected_error_and_returns_the_connection(
    services: Services,
) -> None:
    # DESIGN/STYLE rule 5: the request's unit of work commits when the request ends in an
    # expected error (so a revocation made on the way stays made), and the connection
    # goes back to the pool at once, not whenever the garbage collector gets to it.
    jti = f"uow-{secrets.token_hex(8)}"
    dependency = get_session(services)
    session = await anext(dependency)
    session.add(RevokedAccessToken(jti=jti,
                                   expires_at=services.clock.now() + timedelta(minutes=1)))
    await session.flush()
    # This session's own connection, watched: other tasks (the audit writer) borrow and
    # return connections of the same pool meanwhile.
    ours = (await (await session.connection()).get_raw_connection()).dbapi_connection
    returned: list[object] = []

    def on_checkin(dbapi_connection: object, _record: object) -> None:
        returned.append(dbapi_connection)

    pool = services.engine.sync_engine.pool
    event.listen(pool, "checkin", on_checkin)
    try:
        with pytest.raises(InvalidToken):
            await dependency.athrow(InvalidToken())  # what FastAPI does on an error
    finally:
        event.remove(pool, "checkin", on_checkin)
    assert not session.in_transaction()
    assert ours in returned
    async with services.sessions() as fresh:
        stored = await fresh.scalar(select(RevokedAccessToken.jti)
                                    .where(RevokedAccessToken.jti == jti))
    assert stored == jti


async def test_session_dependency_rolls_back_on_unexpected_error(services: Services) -> None:
    jti = f"uow-{uuid.uuid4().hex[:12]}"
    dependency = get_session(services)
    session = await anext(dependency)
    session.add(RevokedAccessToken(jti=jti,
                                   expires_at=services.clock.now() + timedelta(minutes=1)))
    await session.flush()
    with pytest.raises(RuntimeError):
        await dependency.athrow(RuntimeError("boom"))
    async with services.sessions() as fresh:
        stored = await fresh.scalar(select(RevokedAccessToken.jti)
                                    .where(RevokedAccessToken.jti == jti))
    assert stored is None
