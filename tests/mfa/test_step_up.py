"""Adding a second factor needs a recent sign-in (RFC 9470 step-up, ASVS 7.5.1): an access
token whose ``auth_time`` is older than ``PROVIDER_REAUTH_MAX_AGE`` gets 401
``insufficient_user_authentication`` with ``max_age``, and nothing is written."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import select

from provider.app import create_app
from provider.mfa.models import TotpAuthenticator
from provider.services import Services
from provider.settings import Settings
from tests.conftest import TestClock
from tests.factories import Factory
from tests.helpers import assert_problem, bearer, login, refresh
from tests.mfa.helpers import enrol, freeze_in_a_step
from tests.oauth.grants.test_authorization_code import claims
from tests.web.helpers import Authorization, Browser, exchange, is_page, query_of

MAX_AGE = 300  # PROVIDER_REAUTH_MAX_AGE's default
STEP_UP_DESCRIPTION = "This change needs a recent sign-in. Sign in again, then retry."


async def start(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.post("/users/me/mfa/totp", headers=bearer(access_token))


def assert_step_up(response: httpx.Response, max_age: int = MAX_AGE) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "insufficient_user_authentication",
                               "error_description": STEP_UP_DESCRIPTION, "max_age": max_age}
    assert response.headers["www-authenticate"] == (
        'Bearer realm="provider", error="insufficient_user_authentication", '
        f'error_description="{STEP_UP_DESCRIPTION}", max_age="{max_age}"')
    assert response.headers["cache-control"] == "no-store"


async def pending_secret(services: Services, user_id: str) -> bytes | None:
    async with services.engine.connect() as conn:
        secret: bytes | None = await conn.scalar(
            select(TotpAuthenticator.secret_encrypted)
            .where(TotpAuthenticator.user_id == uuid.UUID(user_id)))
    return secret


async def test_enrolment_takes_a_sign_in_up_to_max_age_old_and_no_older(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock,
        services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    freeze_in_a_step(clock)
    tokens = await login(client, oauth, user, scope="openid account")
    clock.advance(timedelta(seconds=MAX_AGE))
    assert (await start(client, tokens["access_token"])).status_code == 200
    kept = await pending_secret(services, user.id)
    assert kept is not None

    clock.advance(timedelta(seconds=1))  # the token itself lives on (15 minutes)
    assert (await client.get("/users/me", headers=bearer(tokens["access_token"]))
            ).status_code == 200
    assert_step_up(await start(client, tokens["access_token"]))
    assert await pending_secret(services, user.id) == kept  # the refused start wrote nothing

    fresh = await login(client, oauth, user, scope="openid account")
    assert (await start(client, fresh["access_token"])).status_code == 200
    assert await pending_secret(services, user.id) != kept


async def test_a_refreshed_token_keeps_its_sign_in_time(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    """A stolen refresh token gets fresh access tokens, but not a fresh sign-in."""
    user, oauth = await factory.user(), await factory.client()
    freeze_in_a_step(clock)
    tokens = await login(client, oauth, user, scope="openid account")
    clock.advance(timedelta(seconds=MAX_AGE + 60))
    answer = await refresh(client, oauth, tokens["refresh_token"])
    assert answer.status_code == 200, answer.text
    refreshed = answer.json()["access_token"]
    assert claims(refreshed)["auth_time"] == claims(tokens["access_token"])["auth_time"]
    assert_step_up(await start(client, refreshed))


async def test_enrolment_with_two_step_on_is_409_whatever_the_token_age(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    """No sign-in asked for in vain: the 409 comes first."""
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    clock.advance(timedelta(seconds=MAX_AGE + 1))
    again = await start(client, enrolled.tokens["access_token"])
    assert_problem(again, 409, "mfa_already_enabled",
                   "Two-step verification is already on; turn it off before enrolling again.")


async def test_code_flow_steps_up_with_max_age(
        app: FastAPI, factory: Factory, clock: TestClock) -> None:
    """Single sign-on hands out the browser login's old auth_time; the client asks again
    with max_age (the challenge's figure) and the user types the password."""
    user = await factory.user()
    oauth = await factory.code_client(first_party=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        browser = Browser(http)
        first = Authorization(oauth.client_id, scope="openid account")
        answer = await browser.sign_in(first, user.email, user.password)
        assert (await exchange(http, first, answer["code"], auth=oauth.auth)).status_code == 200

        clock.advance(timedelta(seconds=MAX_AGE + 1))
        silent = Authorization(oauth.client_id, scope="openid account")
        redirect = await browser.authorize(silent)
        assert redirect.status_code == 302  # single sign-on: no page
        old = (await exchange(http, silent, query_of(redirect.headers["location"])["code"],
                              auth=oauth.auth)).json()
        assert_step_up(await start(http, old["access_token"]))

        again = Authorization(oauth.client_id, scope="openid account")
        page = await browser.authorize(again, max_age=str(MAX_AGE))
        assert is_page(page, "Sign in")
        back = await browser.follow(await browser.login(page, user.email, user.password))
        new = (await exchange(http, again, query_of(back.headers["location"])["code"],
                              auth=oauth.auth)).json()
        assert claims(new["access_token"])["auth_time"] > claims(old["access_token"])["auth_time"]
        assert (await start(http, new["access_token"])).status_code == 200


async def test_the_allowance_is_the_setting(
        settings: Settings, clock: TestClock, factory: Factory, services: Services) -> None:
    """Another process with ``PROVIDER_REAUTH_MAX_AGE=60`` on the same database."""
    user, oauth = await factory.user(), await factory.client()
    freeze_in_a_step(clock)
    application = create_app(settings.model_copy(update={"reauth_max_age": timedelta(seconds=60)}),
                             clock=clock)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as http:
            tokens = await login(http, oauth, user, scope="openid account")
            clock.advance(timedelta(seconds=61))
            assert_step_up(await start(http, tokens["access_token"]), max_age=60)
            assert await pending_secret(services, user.id) is None


async def test_a_token_without_a_believable_sign_in_time_steps_up(
        client: httpx.AsyncClient, factory: Factory, services: Services) -> None:
    """No ``auth_time``, or one after the token's ``iat``: none of our sign-ins."""
    user, oauth = await factory.user(), await factory.client()
    sid = await factory.session(user, oauth, scope="openid account")
    now = services.clock.now()
    for auth_time in (None, now + timedelta(minutes=1)):
        token, _ = services.jwt.issue_access_token(
            sub=user.id, client_id=oauth.client_id, scope="openid account", now=now,
            ttl=timedelta(minutes=15), sid=sid, auth_time=auth_time)
        assert (await client.get("/users/me", headers=bearer(token))).status_code == 200
        assert_step_up(await start(client, token))
    assert await pending_secret(services, user.id) is None


def test_the_setting_reads_seconds_and_refuses_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVIDER_REAUTH_MAX_AGE", "900")
    assert Settings(_env_file=None).reauth_max_age == timedelta(minutes=15)
    monkeypatch.setenv("PROVIDER_REAUTH_MAX_AGE", "0")
    with pytest.raises(ValidationError, match="reauth_max_age"):
        Settings(_env_file=None)
