"""DELETE /users/me: the password, every session ended, no login, the address freed
(the row is anonymised and kept), and a last mail to the old address."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI

from provider.services import Services
from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, bearer, login, password_login, refresh
from tests.oauth.helpers import assert_invalid_token, assert_refresh_refused, me
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    BAD_CREDENTIALS,
    GOOD_PASSWORD,
    SUBJECT_DELETED,
    SUBJECT_VERIFY,
    WRONG_PASSWORD,
    assert_body,
    credentials,
    http_client,
    load_user,
    register_user,
    subjects,
)


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def delete_me(http: httpx.AsyncClient, access_token: str,
                    password: str) -> httpx.Response:
    return await http.request("DELETE", "/users/me", headers=bearer(access_token),
                              json={"password": password})


async def test_delete_with_wrong_password_is_400_and_changes_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(http, oauth, user)
    assert_body(await delete_me(http, tokens["access_token"], "not my password"),
                400, WRONG_PASSWORD)
    assert (await me(http, tokens["access_token"])).status_code == 200
    assert (await refresh(http, oauth, tokens["refresh_token"])).status_code == 200
    await login(http, oauth, user)
    # The ASGI transport returns once the request's mail work is done: no notice.
    assert subjects(mail_sink, user.email) == []


async def test_delete_needs_the_password_field(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    tokens = await login(http, await factory.client(), user)
    response = await http.request("DELETE", "/users/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 422
    assert (await me(http, tokens["access_token"])).status_code == 200


async def test_delete_ends_sessions_and_login_and_frees_the_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    user = await factory.user(username=f"d{unique_email()[5:17]}", name="Ada")
    assert user.username is not None
    oauth, other_app = await factory.client(), await factory.client(name="other app")
    tokens = await login(http, oauth, user)
    other = await login(http, other_app, user)

    response = await delete_me(http, tokens["access_token"], user.password)
    assert response.status_code == 204
    assert response.content == b""

    assert_invalid_token(await me(http, tokens["access_token"]))
    assert_invalid_token(await me(http, other["access_token"]))
    assert_refresh_refused(await refresh(http, oauth, tokens["refresh_token"]))
    assert_refresh_refused(await refresh(http, other_app, other["refresh_token"]))
    for name in (user.email, user.username):
        assert_oauth_error(await password_login(http, oauth, credentials(name, user.password)),
                           400, "invalid_grant", BAD_CREDENTIALS)

    [farewell] = await mail_sink.wait_for(user.email)
    assert farewell["Subject"] == SUBJECT_DELETED

    # Documented policy: the row stays for audit, without personal data or credential.
    row = await load_user(services, user.id)
    assert row.is_active is False
    assert row.email == f"deleted+{uuid.UUID(user.id).hex}@deleted.invalid"
    assert row.username is None
    assert row.password_hash is None
    assert row.profile == {}

    # The address (and the username) can be registered again, by anyone.
    again = await register_user(http, mail_sink, email=user.email, password=GOOD_PASSWORD,
                                username=user.username)
    assert subjects(mail_sink, user.email) == [SUBJECT_DELETED, SUBJECT_VERIFY]
    fresh = await login(http, oauth, again)
    body = (await me(http, fresh["access_token"])).json()
    assert body["id"] != user.id
    assert body["profile"] == {}
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       BAD_CREDENTIALS)
