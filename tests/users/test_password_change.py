"""POST /users/me/password: the current password, the policy, the other sessions ended,
the caller's own kept, and a notice by mail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI

from tests.factories import Factory
from tests.helpers import assert_oauth_error, bearer, login, password_login, refresh
from tests.oauth.helpers import assert_invalid_token, assert_refresh_refused, me
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    BAD_CREDENTIALS,
    SUBJECT_PASSWORD_CHANGED,
    WRONG_PASSWORD,
    assert_body,
    credentials,
    extra_forbidden,
    http_client,
    subjects,
    weak_password,
)

NEW_PASSWORD = "cobalt meadow fiddle"


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def change(http: httpx.AsyncClient, access_token: str, current: str,
                 new: str = NEW_PASSWORD, **extra: str) -> httpx.Response:
    return await http.post("/users/me/password", headers=bearer(access_token),
                           json={"current_password": current, "new_password": new, **extra})


async def test_change_password_keeps_the_callers_session_and_ends_the_others(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth, other_app = await factory.client(), await factory.client(name="other app")
    mine = await login(http, oauth, user)
    other = await login(http, other_app, user)
    same_app_other_device = await login(http, oauth, user)

    response = await change(http, mine["access_token"], user.password)
    assert response.status_code == 204
    assert response.content == b""

    # The caller's family lives on: its access token and refresh token still work.
    assert (await me(http, mine["access_token"])).status_code == 200
    renewed = await refresh(http, oauth, mine["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    assert (await me(http, renewed.json()["access_token"])).status_code == 200
    # Every other family is revoked, also the caller's other sessions with the same client.
    assert_refresh_refused(await refresh(http, other_app, other["refresh_token"]))
    assert_invalid_token(await me(http, other["access_token"]))
    assert_refresh_refused(await refresh(http, oauth, same_app_other_device["refresh_token"]))
    assert_invalid_token(await me(http, same_app_other_device["access_token"]))

    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       BAD_CREDENTIALS)
    await login(http, oauth, credentials(user.email, NEW_PASSWORD))
    [notice] = await mail_sink.wait_for(user.email)
    assert notice["Subject"] == SUBJECT_PASSWORD_CHANGED
    assert mail_sink.codes_for(user.email) == []


async def test_change_password_with_wrong_current_is_400_and_changes_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth, other_app = await factory.client(), await factory.client(name="other app")
    mine = await login(http, oauth, user)
    other = await login(http, other_app, user)
    response = await change(http, mine["access_token"], "not my password")
    assert_body(response, 400, WRONG_PASSWORD)
    await login(http, oauth, user)
    assert (await refresh(http, other_app, other["refresh_token"])).status_code == 200
    # The ASGI transport returns once the request's mail work is done: no notice.
    assert subjects(mail_sink, user.email) == []


async def test_change_password_to_a_weak_one_is_422(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(http, oauth, user)
    local_part = user.email.split("@")[0]
    cases = {
        "seven77": "The password must be at least 8 characters long.",
        "qwertyuiop": "The password is on a list of commonly used or breached passwords; "
                      "choose a different one.",
        local_part: "The password must not be the same as your email's local part "
                    "(the part before the @).",
        user.email: "The password must not be the same as your email address.",
        "juniper\x00lantern quay": "The password must not contain control characters.",
    }
    for new, detail in cases.items():
        response = await change(http, tokens["access_token"], user.password, new)
        assert_body(response, 422, weak_password(detail))
    await login(http, oauth, user)


async def test_change_password_needs_a_token(http: httpx.AsyncClient) -> None:
    response = await http.post("/users/me/password",
                               json={"current_password": "a" * 10, "new_password": "b" * 10})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_change_password_refuses_unknown_fields(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(http, oauth, user)
    response = await change(http, tokens["access_token"], user.password,
                            keep_sessions="true")
    assert_body(response, 422, extra_forbidden("keep_sessions"))
    await login(http, oauth, user)


async def test_change_password_with_a_token_without_refresh_family(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    """A client without the refresh grant: the change works and ends every family."""
    user = await factory.user()
    with_refresh = await factory.client()
    without_refresh = await factory.client(grants=("password",))
    other = await login(http, with_refresh, user)
    mine = await login(http, without_refresh, user)
    assert "refresh_token" not in mine
    assert (await change(http, mine["access_token"], user.password)).status_code == 204
    assert_refresh_refused(await refresh(http, with_refresh, other["refresh_token"]))
