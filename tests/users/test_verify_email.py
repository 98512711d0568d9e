"""POST /auth/verify-email and /auth/verify-email/request: codes by mail, one use each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, bearer, login, password_login
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    ACCEPTED,
    INVALID_CODE,
    REGISTER_ACCEPTED,
    SUBJECT_VERIFY,
    UNVERIFIED,
    assert_body,
    credentials,
    http_client,
    last_code,
    register,
    register_user,
    subjects,
)


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def verify(http: httpx.AsyncClient, email: str, code: str) -> httpx.Response:
    return await http.post("/auth/verify-email", json={"email": email, "code": code})


async def test_verify_email_marks_the_user_verified(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    oauth = await factory.client()
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       UNVERIFIED)
    code = await last_code(mail_sink, user.email)
    assert_body(await verify(http, user.email.upper(), code), 200, {"status": "verified"})
    tokens = await login(http, oauth, user)
    me = await http.get("/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["is_verified"] is True


async def test_verify_email_wrong_code_is_400_and_the_user_stays_unverified(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert_body(await verify(http, user.email, wrong), 400, INVALID_CODE)
    assert_oauth_error(await password_login(http, await factory.client(), user), 400,
                       "invalid_grant", UNVERIFIED)


async def test_verify_email_code_is_single_use(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    assert_body(await verify(http, user.email, code), 200, {"status": "verified"})
    assert_body(await verify(http, user.email, code), 400, INVALID_CODE)


FULLWIDTH_DIGITS = "".join(chr(0xFF10 + int(d)) for d in "123456")  # digits, not ASCII


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "12 345", FULLWIDTH_DIGITS])
async def test_verify_email_malformed_code_is_invalid_code(
    http: httpx.AsyncClient, mail_sink: SmtpSink, code: str
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    assert_body(await verify(http, user.email, code), 400, INVALID_CODE)


async def test_verify_email_overlong_code_is_422(http: httpx.AsyncClient) -> None:
    response = await verify(http, unique_email(), "1" * 17)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_verify_email_unknown_address_is_invalid_code(http: httpx.AsyncClient) -> None:
    assert_body(await verify(http, unique_email("nobody"), "123456"), 400, INVALID_CODE)


async def test_verify_email_request_sends_a_new_code_that_works(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    first = await last_code(mail_sink, user.email)
    response = await http.post("/auth/verify-email/request", json={"email": user.email})
    assert_body(response, 202, ACCEPTED)
    second = await last_code(mail_sink, user.email, count=2)
    assert subjects(mail_sink, user.email) == [SUBJECT_VERIFY, SUBJECT_VERIFY]
    if second != first:  # one in a million they coincide
        assert_body(await verify(http, user.email, first), 400, INVALID_CODE)
    assert_body(await verify(http, user.email, second), 200, {"status": "verified"})
    await login(http, await factory.client(), user)


async def test_verify_email_request_for_a_verified_user_sends_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user(is_verified=True)
    response = await http.post("/auth/verify-email/request", json={"email": user.email})
    assert_body(response, 202, ACCEPTED)
    # The ASGI transport returns once the request's mail work is done: none was sent.
    assert subjects(mail_sink, user.email) == []


async def test_verify_email_request_for_an_unknown_address_sends_nothing(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    email = unique_email("ghost")
    response = await http.post("/auth/verify-email/request", json={"email": email})
    assert_body(response, 202, ACCEPTED)
    # Registering the address afterwards mails exactly one code: nothing came before.
    assert_body(await register(http, email), 202, REGISTER_ACCEPTED)
    await mail_sink.wait_for(email)
    assert subjects(mail_sink, email) == [SUBJECT_VERIFY]


async def test_verify_email_request_with_invalid_email_is_202(
    http: httpx.AsyncClient
) -> None:
    # A malformed address cannot be registered either: same answer as any other.
    response = await http.post("/auth/verify-email/request", json={"email": "no-at-sign"})
    assert_body(response, 202, ACCEPTED)


async def test_verified_user_logs_in_with_the_username_too(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, username=f"v{unique_email()[5:17]}")
    assert user.username is not None
    await login(http, await factory.client(), credentials(user.username, user.password))
