"""grant_type=refresh_token: rotation, reuse detection, expiry, scope (RFC 9700 §4.14)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio

from provider.app import create_app
from provider.services import Services
from provider.settings import Settings
from provider.tokens.revocation import end_user_sessions
from tests.conftest import TestClock as MovableClock
from tests.conftest import make_settings
from tests.factories import Factory
from tests.helpers import TOKEN, assert_no_store, assert_oauth_error, login, refresh
from tests.oauth.helpers import assert_invalid_token, assert_refresh_refused, me, unverified


async def refreshed(http: httpx.AsyncClient, oauth, token: str, **form: str) -> dict:
    response = await refresh(http, oauth, token, **form)
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body: dict = response.json()
    return body


async def test_refresh_rotates_and_the_old_token_is_then_invalid(
    client, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(client, oauth, user, scope="openid email")
    second = await refreshed(client, oauth, first["refresh_token"])
    assert set(second) == {"access_token", "token_type", "expires_in", "scope",
                           "refresh_token", "id_token"}
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "openid email"
    assert second["expires_in"] == 900
    claims = unverified(second["access_token"])[1]
    assert claims["sub"] == user.id
    assert claims["client_id"] == oauth.client_id
    # Same family, so the same session id.
    assert claims["sid"] == unverified(first["access_token"])[1]["sid"]
    assert_refresh_refused(await refresh(client, oauth, first["refresh_token"]))


async def test_refresh_of_public_client_rotates(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client(public=True)
    response = await client.post(TOKEN, data={
        "grant_type": "password", "client_id": oauth.client_id, "username": user.email,
        "password": user.password,
    })
    assert response.status_code == 200, response.text
    second = await refreshed(client, oauth, response.json()["refresh_token"])
    assert second["refresh_token"] != response.json()["refresh_token"]


async def test_reuse_of_rotated_token_revokes_the_family(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(client, oauth, user)
    second = await refreshed(client, oauth, first["refresh_token"])
    third = await refreshed(client, oauth, second["refresh_token"])
    assert (await me(client, third["access_token"])).status_code == 200

    assert_refresh_refused(await refresh(client, oauth, first["refresh_token"]))
    # The attacker's (or the victim's) newest token dies with the family...
    assert_refresh_refused(await refresh(client, oauth, third["refresh_token"]))
    # ...and so do the family's access tokens at our protected endpoints.
    for body in (first, second, third):
        assert_invalid_token(await me(client, body["access_token"]))


async def test_reuse_does_not_touch_other_families(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    stolen = await login(client, oauth, user)
    other = await login(client, oauth, user)
    await refreshed(client, oauth, stolen["refresh_token"])
    assert_refresh_refused(await refresh(client, oauth, stolen["refresh_token"]))
    assert (await me(client, other["access_token"])).status_code == 200
    await refreshed(client, oauth, other["refresh_token"])


async def test_another_clients_refresh_token_is_refused_and_not_consumed(
    client, factory: Factory
) -> None:
    user = await factory.user()
    owner, thief = await factory.client(), await factory.client()
    public_thief = await factory.client(public=True)
    tokens = await login(client, owner, user)
    assert_refresh_refused(await refresh(client, thief, tokens["refresh_token"]))
    assert_refresh_refused(await refresh(client, public_thief, tokens["refresh_token"]))
    # Neither consumed nor revoked: the owner still refreshes, the access token still works.
    assert (await me(client, tokens["access_token"])).status_code == 200
    await refreshed(client, owner, tokens["refresh_token"])


async def test_refresh_unknown_or_garbage_token_is_invalid_grant(
    client, factory: Factory
) -> None:
    oauth = await factory.client()
    for token in ("nope", "x" * 300, "a.b.c", "é" * 10):
        assert_refresh_refused(await refresh(client, oauth, token))


async def test_refresh_without_token_is_invalid_request(client, factory: Factory) -> None:
    oauth = await factory.client()
    response = await client.post(TOKEN, data={"grant_type": "refresh_token"}, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request",
                       "The refresh_token parameter is required.")


async def test_refresh_token_expires_when_idle(
    client, factory: Factory, clock: MovableClock, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    clock.advance(settings.refresh_token_ttl + timedelta(seconds=1))
    assert_refresh_refused(await refresh(client, oauth, tokens["refresh_token"]))


async def test_idle_expiry_slides_with_each_rotation(
    client, factory: Factory, clock: MovableClock, settings: Settings
) -> None:
    user, oauth = await factory.user(), await factory.client()
    token = (await login(client, oauth, user))["refresh_token"]
    step = settings.refresh_token_ttl - timedelta(days=10)
    for _ in range(3):  # 60 days in all, twice the idle lifetime
        clock.advance(step)
        token = (await refreshed(client, oauth, token))["refresh_token"]


async def test_family_expires_absolutely_however_often_it_is_refreshed(
    client, factory: Factory, clock: MovableClock, settings: Settings
) -> None:
    assert settings.refresh_token_absolute_ttl == timedelta(days=90)
    user, oauth = await factory.user(), await factory.client()
    token = (await login(client, oauth, user))["refresh_token"]
    for days in (29, 29, 29, 2):  # day 89: still inside the family's 90 days
        clock.advance(timedelta(days=days))
        token = (await refreshed(client, oauth, token))["refresh_token"]
    clock.advance(timedelta(days=1, minutes=1))
    assert_refresh_refused(await refresh(client, oauth, token))


async def test_narrower_scope_narrows_only_the_access_token(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid profile email")
    narrow = await refreshed(client, oauth, tokens["refresh_token"], scope="email")
    assert narrow["scope"] == "email"
    assert "id_token" not in narrow
    assert unverified(narrow["access_token"])[1]["scope"] == "email"
    # The new refresh token keeps the scope originally granted (RFC 6749 §6).
    full = await refreshed(client, oauth, narrow["refresh_token"])
    assert full["scope"] == "openid profile email"
    assert "id_token" in full
    assert unverified(full["access_token"])[1]["scope"] == "openid profile email"


@pytest.mark.parametrize("scope", ["openid profile email admin", "openid offline_access"])
async def test_wider_scope_is_invalid_scope_and_consumes_nothing(
    client, factory: Factory, scope: str
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user, scope="openid email account")
    response = await refresh(client, oauth, tokens["refresh_token"], scope=scope)
    assert_oauth_error(response, 400, "invalid_scope",
                       "The requested scope exceeds the original grant.")
    assert (await me(client, tokens["access_token"])).status_code == 200
    await refreshed(client, oauth, tokens["refresh_token"])


async def test_disabled_users_refresh_token_is_invalid_grant(
    client, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    await factory.set_user(user.id, is_active=False)
    assert_refresh_refused(await refresh(client, oauth, tokens["refresh_token"]))
    assert_invalid_token(await me(client, tokens["access_token"]))


async def test_end_user_sessions_ends_every_session(
    client, factory: Factory, services: Services
) -> None:
    user, oauth = await factory.user(), await factory.client()
    bystander = await factory.user()
    families = [await login(client, oauth, user) for _ in range(2)]
    unrelated = await login(client, oauth, bystander)
    async with services.engine.begin() as conn:
        await end_user_sessions(conn, uuid.UUID(user.id), now=services.clock.now())
    for tokens in families:
        assert_refresh_refused(await refresh(client, oauth, tokens["refresh_token"]))
        assert_invalid_token(await me(client, tokens["access_token"]))
    await refreshed(client, oauth, unrelated["refresh_token"])


async def test_end_user_sessions_also_ends_tokens_of_clients_without_refresh(
    client, factory: Factory, services: Services, clock: MovableClock
) -> None:
    # A client without the refresh_token grant gets no refresh token, but its access
    # tokens belong to a session all the same; revoked in the very second they were
    # issued (same `iat`), they die, and a sign-in in that same second lives.
    user, oauth = await factory.user(), await factory.client(grants=("password",))
    clock.freeze()
    tokens = await login(client, oauth, user)
    assert "refresh_token" not in tokens
    uuid.UUID(unverified(tokens["access_token"])[1]["sid"])
    async with services.engine.begin() as conn:
        await end_user_sessions(conn, uuid.UUID(user.id), now=services.clock.now())
    assert_invalid_token(await me(client, tokens["access_token"]))
    introspection = await client.post("/oauth/introspect", auth=oauth.auth,
                                      data={"token": tokens["access_token"]})
    assert introspection.json() == {"active": False}
    # A login after the revocation, in the same second, is unaffected.
    later = await login(client, oauth, user)
    assert unverified(later["access_token"])[1]["iat"] == unverified(
        tokens["access_token"])[1]["iat"]
    assert (await me(client, later["access_token"])).status_code == 200


async def test_end_user_sessions_can_keep_the_callers_session(
    client, factory: Factory, services: Services
) -> None:
    # A password change ends the user's other sessions, not the one making the change.
    user, oauth = await factory.user(), await factory.client()
    current, other = await login(client, oauth, user), await login(client, oauth, user)
    keep = uuid.UUID(unverified(current["access_token"])[1]["sid"])
    async with services.engine.begin() as conn:
        await end_user_sessions(conn, uuid.UUID(user.id), now=services.clock.now(),
                                keep=keep)
    assert_refresh_refused(await refresh(client, oauth, other["refresh_token"]))
    assert_invalid_token(await me(client, other["access_token"]))
    assert (await me(client, current["access_token"])).status_code == 200
    await refreshed(client, oauth, current["refresh_token"])


async def test_parallel_refreshes_of_one_token_one_wins_none_fails_with_5xx(
    client, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    token = (await login(client, oauth, user))["refresh_token"]
    answers = await asyncio.gather(*(refresh(client, oauth, token) for _ in range(6)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 400, 400, 400, 400, 400], [r.text for r in answers]
    for response in answers:
        if response.status_code == 400:
            assert_refresh_refused(response)


# --- PROVIDER_REFRESH_REUSE_GRACE ------------------------------------------------------


@dataclass
class GraceApp:
    http: httpx.AsyncClient
    services: Services


GRACE = timedelta(seconds=30)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def grace(settings: Settings, clock: MovableClock) -> AsyncIterator[GraceApp]:
    """A second app on the same database with a 30 s reuse grace for the predecessor."""
    grace_settings = make_settings(settings.database_url, settings.keys_dir,
                                   refresh_reuse_grace=GRACE)
    application = create_app(grace_settings, clock=clock)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            yield GraceApp(http, application.state.services)


async def test_grace_lets_the_immediate_predecessor_be_retried(
    grace: GraceApp, factory: Factory, clock: MovableClock
) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(grace.http, oauth, user)
    lost = await refreshed(grace.http, oauth, first["refresh_token"])  # response "lost"
    clock.advance(GRACE - timedelta(seconds=5))
    retry = await refreshed(grace.http, oauth, first["refresh_token"])
    assert retry["refresh_token"] not in (first["refresh_token"], lost["refresh_token"])
    # The retry supersedes the lost successor; the chain continues from the retry.
    await refreshed(grace.http, oauth, retry["refresh_token"])
    assert (await me(grace.http, retry["access_token"])).status_code == 200


async def test_grace_never_covers_an_older_generation(
    grace: GraceApp, factory: Factory
) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(grace.http, oauth, user)
    second = await refreshed(grace.http, oauth, first["refresh_token"])
    third = await refreshed(grace.http, oauth, second["refresh_token"])
    # `first` is two generations back: reuse, the family dies at once.
    assert_refresh_refused(await refresh(grace.http, oauth, first["refresh_token"]))
    assert_refresh_refused(await refresh(grace.http, oauth, third["refresh_token"]))
    assert_invalid_token(await me(grace.http, third["access_token"]))


async def test_grace_over_predecessor_revokes_the_family(
    grace: GraceApp, factory: Factory, clock: MovableClock
) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(grace.http, oauth, user)
    second = await refreshed(grace.http, oauth, first["refresh_token"])
    clock.advance(GRACE + timedelta(seconds=1))
    assert_refresh_refused(await refresh(grace.http, oauth, first["refresh_token"]))
    assert_refresh_refused(await refresh(grace.http, oauth, second["refresh_token"]))
    assert_invalid_token(await me(grace.http, second["access_token"]))


async def test_grace_does_not_help_another_client(grace: GraceApp, factory: Factory) -> None:
    user = await factory.user()
    owner, thief = await factory.client(), await factory.client()
    first = await login(grace.http, owner, user)
    second = await refreshed(grace.http, owner, first["refresh_token"])
    assert_refresh_refused(await refresh(grace.http, thief, first["refresh_token"]))
    await refreshed(grace.http, owner, second["refresh_token"])


async def test_strict_default_has_no_grace(client, factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    first = await login(client, oauth, user)
    second = await refreshed(client, oauth, first["refresh_token"])
    assert_refresh_refused(await refresh(client, oauth, first["refresh_token"]))
    assert_refresh_refused(await refresh(client, oauth, second["refresh_token"]))
