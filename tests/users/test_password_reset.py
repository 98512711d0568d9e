"""POST /auth/forgot-password and /auth/reset-password end to end: the code by mail, the
new password, every session ended, the notice, and a throttled account's way back in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from provider.settings import Settings
from tests.conftest import TestClock as MovableClock
from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, login, password_login, refresh
from tests.oauth.helpers import assert_invalid_token, assert_refresh_refused, me
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    ACCEPTED,
    BAD_CREDENTIALS,
    INVALID_CODE,
    SUBJECT_PASSWORD_CHANGED,
    SUBJECT_RESET,
    assert_body,
    credentials,
    http_client,
    own_app,
    register_user,
    request_reset_code,
    subjects,
    weak_password,
)

NEW_PASSWORD = "nimbus pepper octave"
DONE = {"status": "password_reset"}


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def reset(http: httpx.AsyncClient, email: str, code: str,
                new_password: str = NEW_PASSWORD) -> httpx.Response:
    return await http.post("/auth/reset-password",
                           json={"email": email, "code": code, "new_password": new_password})


async def test_forgot_password_answers_alike_for_known_and_unknown_addresses(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    stranger = unique_email("stranger")
    known = await http.post("/auth/forgot-password", json={"email": user.email})
    unknown = await http.post("/auth/forgot-password", json={"email": stranger})
    assert_body(known, 202, ACCEPTED)
    assert_body(unknown, 202, ACCEPTED)
    [message] = await mail_sink.wait_for(user.email)
    assert message["Subject"] == SUBJECT_RESET
    assert len(mail_sink.codes_for(user.email)) == 1
    assert mail_sink.messages_to(stranger) == []


async def test_reset_password_changes_it_and_ends_every_session(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth, other_app = await factory.client(), await factory.client(name="other app")
    phone = await login(http, oauth, user)
    laptop = await login(http, other_app, user)
    rotated = await refresh(http, oauth, phone["refresh_token"])
    assert rotated.status_code == 200
    phone = rotated.json()

    code = await request_reset_code(http, mail_sink, user.email)
    response = await reset(http, user.email, code)
    assert_body(response, 200, DONE)  # and no tokens: a reset never signs anyone in

    # Every refresh family is revoked, and with it the access tokens it issued.
    assert_refresh_refused(await refresh(http, oauth, phone["refresh_token"]))
    assert_refresh_refused(await refresh(http, other_app, laptop["refresh_token"]))
    assert_invalid_token(await me(http, phone["access_token"]))
    assert_invalid_token(await me(http, laptop["access_token"]))

    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       BAD_CREDENTIALS)
    fresh = await login(http, oauth, credentials(user.email, NEW_PASSWORD))
    assert (await me(http, fresh["access_token"])).status_code == 200

    messages = await mail_sink.wait_for(user.email, count=2)
    assert [m["Subject"] for m in messages] == [SUBJECT_RESET, SUBJECT_PASSWORD_CHANGED]
    assert mail_sink.codes_for(user.email) == [code]  # the notice carries no code


@pytest.mark.parametrize(("new_password", "detail"), [
    ("short77", "The password must be at least 8 characters long."),
    ("x" * 1025, "The password must be at most 1024 characters long."),
    ("iloveyou", "The password is on a list of commonly used or breached passwords; "
                 "choose a different one."),
], ids=["7-chars", "1025-chars", "blocklisted"])
async def test_reset_with_a_weak_password_is_422_and_keeps_the_code(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, new_password: str,
    detail: str
) -> None:
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    assert_body(await reset(http, user.email, code, new_password), 422, weak_password(detail))
    oauth = await factory.client()
    await login(http, oauth, user)  # unchanged
    assert_body(await reset(http, user.email, code), 200, DONE)
    await login(http, oauth, credentials(user.email, NEW_PASSWORD))


async def test_reset_refuses_the_email_local_part_as_password(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    local_part = user.email.split("@")[0]
    code = await request_reset_code(http, mail_sink, user.email)
    assert_body(await reset(http, user.email, code, local_part.upper()), 422, weak_password(
        "The password must not be the same as your email's local part "
        "(the part before the @)."))
    assert_body(await reset(http, user.email, code), 200, DONE)


async def test_reset_with_a_wrong_code_keeps_the_password(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    oauth = await factory.client()
    tokens = await login(http, oauth, user)
    code = await request_reset_code(http, mail_sink, user.email)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert_body(await reset(http, user.email, wrong), 400, INVALID_CODE)
    await login(http, oauth, user)
    assert (await refresh(http, oauth, tokens["refresh_token"])).status_code == 200
    # The ASGI transport returns once the request's mail work is done: no notice.
    assert subjects(mail_sink, user.email) == [SUBJECT_RESET]


async def test_reset_without_asking_first_is_invalid_code(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    assert_body(await reset(http, user.email, "123456"), 400, INVALID_CODE)


async def test_reset_proves_the_address_of_an_unverified_user(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await request_reset_code(http, mail_sink, user.email)
    assert_body(await reset(http, user.email, code), 200, DONE)
    await login(http, await factory.client(), credentials(user.email, NEW_PASSWORD))


@pytest.mark.parametrize("identifier", ["email", "username"])
async def test_throttled_account_can_reset_its_password_and_log_in(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink, factory: Factory,
    identifier: str
) -> None:
    user = await factory.user(username=f"t{unique_email()[5:17]}")
    name = user.email if identifier == "email" else user.username
    assert name is not None
    oauth = await factory.client()
    async with own_app(settings, clock, mail_sink, login_throttle_account="2 per hour") as own, \
            own.client() as http:
        for _ in range(2):
            attempt = await password_login(http, oauth, credentials(name, "wrong guess 1234"))
            assert_oauth_error(attempt, 400, "invalid_grant", BAD_CREDENTIALS)
        throttled = await password_login(http, oauth, credentials(name, user.password))
        assert throttled.status_code == 429
        assert throttled.json() == {"error": "slow_down",
                                    "error_description": "Too many attempts. Try again later."}
        assert int(throttled.headers["retry-after"]) >= 1

        # The reset path stays open, and a reset lifts the account's throttle.
        code = await request_reset_code(http, mail_sink, user.email)
        assert_body(await reset(http, user.email, code), 200, DONE)
        await login(http, oauth, credentials(name, NEW_PASSWORD))
