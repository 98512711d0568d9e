"""No account enumeration (ASVS 6.3.8, OWASP Forgot Password): the flows that start
from an email address answer a known and an unknown address with the same status, body
and headers; code checks answer an unknown address like a wrong code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.factories import Factory, unique_email
from tests.factories import TestUser as Known
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    ACCEPTED,
    INVALID_CODE,
    REGISTER_ACCEPTED,
    assert_body,
    http_client,
    last_code,
    register_user,
    request_reset_code,
    weak_password,
)

PASSWORD = "harbour velvet compass"


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


# The date and the request id differ between any two answers, known address or not.
PER_REQUEST = ("date", "x-request-id")


def headers(response: httpx.Response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.multi_items() if k not in PER_REQUEST)


def assert_same_answer(known: httpx.Response, unknown: httpx.Response) -> None:
    assert known.status_code == unknown.status_code
    assert known.content == unknown.content
    assert headers(known) == headers(unknown)


async def known_users(http: httpx.AsyncClient, factory: Factory,
                      mail_sink: SmtpSink) -> dict[str, Known]:
    return {
        "verified": await factory.user(),
        "unverified": await register_user(http, mail_sink, verify=False),
    }


@pytest.mark.parametrize("kind", ["verified", "unverified"])
async def test_register_answers_known_and_unknown_addresses_alike(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, kind: str
) -> None:
    user = (await known_users(http, factory, mail_sink))[kind]
    known = await http.post("/auth/register", json={"email": user.email, "password": PASSWORD})
    unknown = await http.post("/auth/register",
                              json={"email": unique_email(), "password": PASSWORD})
    assert_body(known, 202, REGISTER_ACCEPTED)
    assert_same_answer(known, unknown)


@pytest.mark.parametrize("path", ["/auth/forgot-password", "/auth/verify-email/request"])
async def test_email_only_flows_answer_known_and_unknown_addresses_alike(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, path: str
) -> None:
    answers: list[httpx.Response] = []
    for user in (await known_users(http, factory, mail_sink)).values():
        answers.append(await http.post(path, json={"email": user.email}))
        answers.append(await http.post(path, json={"email": user.email.upper()}))
    answers.append(await http.post(path, json={"email": unique_email()}))
    answers.append(await http.post(path, json={"email": "not an address"}))
    assert_body(answers[0], 202, ACCEPTED)
    for answer in answers[1:]:
        assert_same_answer(answers[0], answer)


@pytest.mark.parametrize("path", ["/auth/forgot-password", "/auth/verify-email/request"])
async def test_a_throttled_address_answers_like_an_unknown_one(
    http: httpx.AsyncClient, mail_sink: SmtpSink, path: str
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    for _ in range(4):  # the register mail plus these: past "3 per 2 minutes"
        await http.post(path, json={"email": user.email})
    throttled = await http.post(path, json={"email": user.email})
    unknown = await http.post(path, json={"email": unique_email()})
    assert_body(throttled, 202, ACCEPTED)
    assert_same_answer(throttled, unknown)


async def test_verify_email_unknown_address_answers_like_a_wrong_code(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    known = await http.post("/auth/verify-email", json={"email": user.email, "code": wrong})
    unknown = await http.post("/auth/verify-email",
                              json={"email": unique_email(), "code": wrong})
    assert_body(known, 400, INVALID_CODE)
    assert_same_answer(known, unknown)


async def test_reset_password_unknown_address_answers_like_a_wrong_code(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    body: dict[str, Any] = {"code": wrong, "new_password": PASSWORD}
    known = await http.post("/auth/reset-password", json={**body, "email": user.email})
    unknown = await http.post("/auth/reset-password", json={**body, "email": unique_email()})
    assert_body(known, 400, INVALID_CODE)
    assert_same_answer(known, unknown)


async def test_reset_password_weak_password_answers_alike_for_unknown_address(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    """The policy is checked before the address is looked up: a weak password must not
    tell a registered address (422) from an unknown one (400)."""
    user = await factory.user()
    body = {"code": "123456", "new_password": "1234567"}
    known = await http.post("/auth/reset-password", json={**body, "email": user.email})
    unknown = await http.post("/auth/reset-password", json={**body, "email": unique_email()})
    assert_body(known, 422, weak_password("The password must be at least 8 characters long."))
    assert_same_answer(known, unknown)


async def test_reset_password_local_part_rule_answers_alike_for_unknown_address(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user = await factory.user()
    stranger = unique_email()
    answers = []
    for email in (user.email, stranger):
        answers.append(await http.post("/auth/reset-password", json={
            "email": email, "code": "123456", "new_password": email.split("@")[0]}))
    assert answers[0].status_code == 422
    assert_same_answer(*answers)
