"""A deactivated client's sign-ins through another process's stale client cache.

Each process keeps clients for a few seconds (provider.clients.service.ClientCache), so
for that long after an admin deactivates a client through one process, another can
still sign users in to it. Deactivation revokes the sessions that exist when it
commits; these later ones must not come to life when the client is reactivated, nor
may a code or an mfa_token issued meanwhile start one.

"Another process" here is a second app on the same database with a cache of its own,
made to keep entries for an hour so that what is tested does not hang on the 5 s TTL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest_asyncio
from fastapi import FastAPI

from provider.app import create_app
from provider.clients.service import ClientCache
from provider.services import Services
from provider.settings import Settings
from tests.admin.helpers import Session, admin_login
from tests.conftest import TestClock
from tests.factories import Factory, TestClient
from tests.helpers import bearer, login, refresh
from tests.mfa.helpers import (
    BAD_MFA_TOKEN,
    STEP,
    assert_answer,
    code_at,
    enable_totp,
    finish,
    mfa_token,
)
from tests.oauth.helpers import assert_refresh_refused
from tests.tokens.test_lifecycle import INACTIVE, introspect
from tests.web.helpers import Authorization, Browser, exchange


@pytest_asyncio.fixture(loop_scope="session")
async def stale(settings: Settings, clock: TestClock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a second app whose client cache is not told of changes."""
    application: FastAPI = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        services: Services = application.state.services
        application.state.services = dataclasses.replace(
            services, clients=ClientCache(services.single, ttl_seconds=3600))
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            yield http


async def set_active(http: httpx.AsyncClient, actor: Session, client: TestClient,
                     value: bool) -> None:
    response = await http.patch(f"/admin/clients/{client.client_id}", headers=actor.headers,
                                json={"is_active": value})
    assert response.status_code == 200, response.text


async def test_a_session_started_after_deactivation_stays_dead_after_reactivation(
    client: httpx.AsyncClient, stale: httpx.AsyncClient, factory: Factory, clock: TestClock
) -> None:
    actor = await admin_login(client, factory)
    user = await factory.user()
    oauth = await factory.client(scopes="openid account")
    resource_server = await factory.client(grants=("client_credentials",), scopes="")
    await login(stale, oauth, user, scope="openid account")  # the other process caches it

    await set_active(client, actor, oauth, False)
    # The precondition: the other process still signs users in to the client.
    late = await login(stale, oauth, user, scope="openid account")
    # While the client is inactive, the late session's refresh token works nowhere: the
    # stale process still lets the client in, but the session is not the client's to use.
    assert_refresh_refused(await refresh(stale, oauth, late["refresh_token"]))
    inactive = await refresh(client, oauth, late["refresh_token"])
    assert inactive.status_code == 401 and inactive.json()["error"] == "invalid_client"

    clock.advance(timedelta(seconds=1))
    await set_active(client, actor, oauth, True)
    assert_refresh_refused(await refresh(client, oauth, late["refresh_token"]))
    me = await client.get("/users/me", headers=bearer(late["access_token"]))
    assert me.status_code == 401, me.text
    for token in (late["access_token"], late["refresh_token"]):
        assert await introspect(client, resource_server, token) == INACTIVE

    # A sign-in after the reactivation works and refreshes.
    fresh = await login(client, oauth, user, scope="openid account")
    rotated = await refresh(client, oauth, fresh["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    me = await client.get("/users/me", headers=bearer(rotated.json()["access_token"]))
    assert me.status_code == 200, me.text


async def test_a_code_issued_after_deactivation_starts_no_session_after_reactivation(
    client: httpx.AsyncClient, stale: httpx.AsyncClient, factory: Factory, clock: TestClock
) -> None:
    actor = await admin_login(client, factory)
    user = await factory.user()
    app_client = await factory.code_client(first_party=True)
    browser = Browser(stale)
    warm = Authorization(app_client.client_id)
    await browser.sign_in(warm, user.email, user.password)  # the other process caches it

    await set_active(client, actor, app_client, False)
    late = Authorization(app_client.client_id)
    answer = await browser.sign_in(late, user.email, user.password)  # the precondition
    clock.advance(timedelta(seconds=1))
    await set_active(client, actor, app_client, True)

    response = await exchange(client, late, answer["code"], auth=app_client.auth)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    # A code issued after the reactivation is exchanged as always.
    again = Authorization(app_client.client_id)
    answer = await Browser(client).sign_in(again, user.email, user.password)
    response = await exchange(client, again, answer["code"], auth=app_client.auth)
    assert response.status_code == 200, response.text


async def test_an_mfa_token_issued_after_deactivation_starts_no_session_after_reactivation(
    client: httpx.AsyncClient, stale: httpx.AsyncClient, factory: Factory, clock: TestClock,
    services: Services,
) -> None:
    actor = await admin_login(client, factory)
    user = await factory.user()
    secret, _ = await enable_totp(services, user)
    oauth = await factory.client(scopes="openid account")
    await mfa_token(stale, oauth, user)  # the other process caches the client

    await set_active(client, actor, oauth, False)
    late = await mfa_token(stale, oauth, user)  # the precondition
    clock.advance(timedelta(seconds=1))
    await set_active(client, actor, oauth, True)

    clock.advance(STEP)
    assert_answer(await finish(client, oauth, late, code_at(secret, clock.now())), 400,
                  BAD_MFA_TOKEN)
    # An mfa_token issued after the reactivation finishes the sign-in, with the same
    # code (the refused attempt used nothing up).
    fresh = await mfa_token(client, oauth, user)
    response = await finish(client, oauth, fresh, code_at(secret, clock.now()))
    assert response.status_code == 200, response.text
