"""Email one-time codes (provider.codes.service) through the HTTP flows that use them, and
directly for the race: 6 digits, HMAC-stored, 10 minutes, single use, 5 attempts per
code, a resend kills the old code and gives the new one its own tries, wrong codes count
per account across resends (growing, bounded waits), submissions per client address,
resends are throttled."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import event, select

from provider.codes.models import EmailCode
from provider.codes.service import MAX_ATTEMPTS, InvalidCode, Purpose
from provider.services import Services
from provider.settings import Settings
from tests.admin.helpers import admin_login
from tests.conftest import TestClock as MovableClock
from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, bearer, login, password_login
from tests.smtp_sink import SmtpSink
from tests.users.flows import (
    ACCEPTED,
    INVALID_CODE,
    OTHER_PASSWORD,
    RATE_LIMITED,
    SUBJECT_RESET,
    SUBJECT_VERIFY,
    UNVERIFIED,
    assert_body,
    credentials,
    http_client,
    last_code,
    own_app,
    register_user,
    request_reset_code,
    subjects,
)

NEW_PASSWORD = "saffron glacier tuba"
# Tests of the per-code cap alone lift the account-wide throttle of wrong codes.
NO_ACCOUNT_THROTTLE = {"code_throttle_account": "1000 per minute"}


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


def wrong(code: str, n: int = 1) -> str:
    """A well-formed code that is not ``code``."""
    return f"{(int(code) + n) % 1_000_000:06d}"


async def verify(http: httpx.AsyncClient, email: str, code: str) -> httpx.Response:
    return await http.post("/auth/verify-email", json={"email": email, "code": code})


async def reset(http: httpx.AsyncClient, email: str, code: str,
                new_password: str = NEW_PASSWORD) -> httpx.Response:
    return await http.post("/auth/reset-password",
                           json={"email": email, "code": code, "new_password": new_password})


async def resend_verification(http: httpx.AsyncClient, email: str) -> None:
    response = await http.post("/auth/verify-email/request", json={"email": email})
    assert_body(response, 202, ACCEPTED)


async def code_row(services: Services, user_id: str, purpose: Purpose) -> EmailCode:
    async with services.sessions() as session:
        row = await session.scalar(select(EmailCode).where(
            EmailCode.user_id == uuid.UUID(user_id), EmailCode.purpose == purpose.value))
        assert row is not None
        return row


# --- wrong codes and the attempt cap ----------------------------------------------------


async def test_wrong_code_is_400_invalid_code(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    response = await verify(http, user.email, wrong(code))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "The code is wrong, expired or already used.",
        "status": 400,
        "code": "invalid_code",
    }


async def test_five_wrong_attempts_kill_the_code(
    settings: Settings, clock: MovableClock, factory: Factory, mail_sink: SmtpSink
) -> None:
    async with own_app(settings, clock, mail_sink, **NO_ACCOUNT_THROTTLE) as own, \
            own.client() as http:
        user = await register_user(http, mail_sink, verify=False)
        code = await last_code(mail_sink, user.email)
        for n in range(1, MAX_ATTEMPTS + 1):
            assert_body(await verify(http, user.email, wrong(code, n)), 400, INVALID_CODE)
        assert_body(await verify(http, user.email, code), 400, INVALID_CODE)
        assert_oauth_error(await password_login(http, await factory.client(), user), 400,
                           "invalid_grant", UNVERIFIED)


async def test_four_wrong_attempts_leave_the_code_alive(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    for n in range(1, MAX_ATTEMPTS):
        assert_body(await verify(http, user.email, wrong(code, n)), 400, INVALID_CODE)
    assert_body(await verify(http, user.email, code), 200, {"status": "verified"})


async def test_malformed_codes_count_as_attempts(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink
) -> None:
    async with own_app(settings, clock, mail_sink, **NO_ACCOUNT_THROTTLE) as own, \
            own.client() as http:
        user = await register_user(http, mail_sink, verify=False)
        code = await last_code(mail_sink, user.email)
        empty = await verify(http, user.email, "")
        assert empty.status_code == 422  # refused by the schema: not an attempt
        for attempt in ["1", "abcdef", "1234567", "12345x"]:
            assert_body(await verify(http, user.email, attempt), 400, INVALID_CODE)
        assert_body(await verify(http, user.email, wrong(code)), 400, INVALID_CODE)
        assert_body(await verify(http, user.email, code), 400, INVALID_CODE)


async def test_resend_gives_the_new_code_its_own_five_tries(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink
) -> None:
    """Five wrong codes (a stranger's, say) kill the code, not the next one: a resend
    mails a code that works, and that itself takes four wrong tries and still works."""
    async with own_app(settings, clock, mail_sink, **NO_ACCOUNT_THROTTLE) as own, \
            own.client() as http:
        user = await register_user(http, mail_sink, verify=False)
        first = await last_code(mail_sink, user.email)
        for n in range(1, MAX_ATTEMPTS + 1):
            assert_body(await verify(http, user.email, wrong(first, n)), 400, INVALID_CODE)
        await resend_verification(http, user.email)
        second = await last_code(mail_sink, user.email, count=2)
        for n in range(1, MAX_ATTEMPTS):
            assert_body(await verify(http, user.email, wrong(second, n)), 400, INVALID_CODE)
        assert_body(await verify(http, user.email, second), 200, {"status": "verified"})


async def test_wrong_codes_count_per_account_across_a_resend(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    """The account-wide count (default 5 per minute; 10 per 2 minutes) is what a resend
    does not reset: 3 + 2 wrong codes, and the right new code waits, at most a minute."""
    user = await register_user(http, mail_sink, verify=False)
    first = await last_code(mail_sink, user.email)
    for n in range(1, 4):
        assert_body(await verify(http, user.email, wrong(first, n)), 400, INVALID_CODE)
    await resend_verification(http, user.email)
    second = await last_code(mail_sink, user.email, count=2)
    for n in range(1, 3):
        assert_body(await verify(http, user.email, wrong(second, n)), 400, INVALID_CODE)
    throttled = await verify(http, user.email, second)
    assert_body(throttled, 429, RATE_LIMITED)
    assert 1 <= int(throttled.headers["retry-after"]) <= 60


async def test_a_right_code_clears_the_account_count(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    for password in (NEW_PASSWORD, OTHER_PASSWORD):
        code = await request_reset_code(http, mail_sink, user.email)
        for n in range(1, MAX_ATTEMPTS):
            assert_body(await reset(http, user.email, wrong(code, n)), 400, INVALID_CODE)
        # The right code is the 5th submission, the second time the 10th within a
        # minute: served both times, as the success restarts the count.
        assert_body(await reset(http, user.email, code, password), 200,
                    {"status": "password_reset"})


async def test_parallel_wrong_codes_count_like_sequential_ones(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """20 wrong codes at once for one account: 5 are compared (400), 15 wait (429)."""
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    answers = await asyncio.gather(*(reset(http, user.email, wrong(code, n))
                                     for n in range(1, 21)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [400] * 5 + [429] * 15, statuses
    for answer in answers:
        assert_body(answer, answer.status_code,
                    INVALID_CODE if answer.status_code == 400 else RATE_LIMITED)


async def test_code_submissions_are_throttled_per_client_address(
    settings: Settings, clock: MovableClock, factory: Factory, mail_sink: SmtpSink
) -> None:
    """Spraying guesses across accounts from one address is throttled; another address
    is not held back by it."""
    users = [await factory.user() for _ in range(4)]
    async with own_app(settings, clock, mail_sink, code_throttle_address="3 per hour") as own:
        async with own.client() as sprayer:
            for user in users[:3]:
                assert_body(await reset(sprayer, user.email, "123456"), 400, INVALID_CODE)
            throttled = await reset(sprayer, users[3].email, "123456")
            assert_body(throttled, 429, RATE_LIMITED)
            assert int(throttled.headers["retry-after"]) >= 1
        async with own.client() as other:
            code = await request_reset_code(other, mail_sink, users[3].email)
            assert_body(await reset(other, users[3].email, code), 200,
                        {"status": "password_reset"})


async def test_resend_kills_the_previous_code(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    first = await request_reset_code(http, mail_sink, user.email)
    second = await request_reset_code(http, mail_sink, user.email)
    if first != second:  # they coincide once in a million
        assert_body(await reset(http, user.email, first), 400, INVALID_CODE)
    assert_body(await reset(http, user.email, second), 200, {"status": "password_reset"})


# --- expiry, single use, purpose ---------------------------------------------------------


async def test_code_expires_after_ten_minutes(
    http: httpx.AsyncClient, mail_sink: SmtpSink, clock: MovableClock
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    clock.advance(timedelta(minutes=10, seconds=1))
    assert_body(await verify(http, user.email, code), 400, INVALID_CODE)
    # A new code after expiry works (and its count starts afresh).
    await resend_verification(http, user.email)
    fresh = await last_code(mail_sink, user.email, count=2)
    assert_body(await verify(http, user.email, fresh), 200, {"status": "verified"})


async def test_code_still_works_just_before_expiry(
    http: httpx.AsyncClient, mail_sink: SmtpSink, clock: MovableClock
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    clock.advance(timedelta(minutes=9, seconds=50))
    assert_body(await verify(http, user.email, code), 200, {"status": "verified"})


async def test_code_expiry_is_ten_minutes_in_the_database(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    user = await factory.user()
    await request_reset_code(http, mail_sink, user.email)
    row = await code_row(services, user.id, Purpose.RESET_PASSWORD)
    assert row.expires_at - row.created_at == timedelta(minutes=10)


async def test_code_is_single_use(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    assert_body(await reset(http, user.email, code), 200, {"status": "password_reset"})
    assert_body(await reset(http, user.email, code, OTHER_PASSWORD), 400, INVALID_CODE)
    await login(http, await factory.client(), credentials(user.email, NEW_PASSWORD))


async def test_verify_code_is_rejected_for_a_password_reset(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    code = await last_code(mail_sink, user.email)
    assert_body(await reset(http, user.email, code), 400, INVALID_CODE)
    oauth = await factory.client()
    # The password did not change; the code still does what it was made for.
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       UNVERIFIED)
    assert_body(await verify(http, user.email, code), 200, {"status": "verified"})
    await login(http, oauth, user)


async def test_reset_code_is_rejected_for_email_verification(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    reset_code = await request_reset_code(http, mail_sink, user.email)
    assert subjects(mail_sink, user.email) == [SUBJECT_VERIFY, SUBJECT_RESET]
    assert_body(await verify(http, user.email, reset_code), 400, INVALID_CODE)
    oauth = await factory.client()
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       UNVERIFIED)
    assert_body(await reset(http, user.email, reset_code), 200, {"status": "password_reset"})


# --- concurrency ------------------------------------------------------------------------


async def test_parallel_consumes_of_one_code_succeed_once(
    factory: Factory, services: Services
) -> None:
    """Two transactions submit one valid code at once: exactly one wins (both backends;
    PostgreSQL in CI, where the conditional UPDATE is what decides)."""
    user = await factory.user()
    user_id = uuid.UUID(user.id)
    codes = services.accounts.codes

    async def consume(code: str) -> bool:
        async with services.sessions() as session:
            try:
                await codes.consume(session, user_id=user_id, purpose=Purpose.RESET_PASSWORD,
                                    address=user.email, code=code, now=services.clock.now())
            except InvalidCode:
                await session.commit()  # as the unit of work does on an expected error
                return False
            await session.commit()
            return True

    for _ in range(5):
        async with services.sessions() as session:
            code = await codes.issue(session, user_id=user_id, purpose=Purpose.RESET_PASSWORD,
                                     address=user.email, now=services.clock.now())
            await session.commit()
        results = await asyncio.gather(consume(code), consume(code))
        assert sorted(results) == [False, True]
        row = await code_row(services, user.id, Purpose.RESET_PASSWORD)
        assert row.used_at is not None
        assert row.failed_attempts == 0  # losing a race is not a wrong guess


async def test_parallel_resets_with_one_code_succeed_once(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    first, second = await asyncio.gather(
        reset(http, user.email, code, NEW_PASSWORD),
        reset(http, user.email, code, OTHER_PASSWORD),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 400]
    winner, loser = (first, second) if first.status_code == 200 else (second, first)
    assert_body(loser, 400, INVALID_CODE)
    password = NEW_PASSWORD if winner is first else OTHER_PASSWORD
    await login(http, await factory.client(), credentials(user.email, password))


# --- bound to the account's address -------------------------------------------------------


async def test_a_reset_code_dies_when_the_account_moves_to_another_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """A code proves control of the address it was mailed to, and of no other: once the
    account has moved, whoever still reads the old mailbox cannot reset its password."""
    user = await factory.user()
    tokens = await login(http, await factory.client(), user)
    auth = bearer(tokens["access_token"])
    old_code = await request_reset_code(http, mail_sink, user.email)
    new_email = unique_email("moved")
    moved = await http.patch("/users/me", headers=auth,
                             json={"email": new_email, "password": user.password})
    assert moved.status_code == 200, moved.text
    confirmed = await http.post("/users/me/email/confirm", headers=auth,
                                json={"code": await last_code(mail_sink, new_email)})
    assert confirmed.status_code == 200 and confirmed.json()["email"] == new_email
    assert_body(await reset(http, new_email, old_code), 400, INVALID_CODE)
    # The new address's own code works.
    code = await request_reset_code(http, mail_sink, new_email)
    assert_body(await reset(http, new_email, code), 200, {"status": "password_reset"})


async def test_a_verification_code_dies_when_an_admin_changes_the_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    old_code = await last_code(mail_sink, user.email)
    admin = await admin_login(http, factory)
    found = await http.get("/admin/users", headers=admin.headers,
                           params={"email": user.email})
    user_id = found.json()["items"][0]["id"]
    new_email = unique_email("admin-moved")
    changed = await http.patch(f"/admin/users/{user_id}", headers=admin.headers,
                               json={"email": new_email})
    assert changed.status_code == 200 and changed.json()["is_verified"] is False
    assert_body(await verify(http, new_email, old_code), 400, INVALID_CODE)
    await resend_verification(http, new_email)
    code = await last_code(mail_sink, new_email)
    assert_body(await verify(http, new_email, code), 200, {"status": "verified"})


# --- the same work with or without an account -----------------------------------------------


@pytest.mark.parametrize("path", ["/auth/reset-password", "/auth/verify-email"])
async def test_a_wrong_code_runs_the_same_statements_with_or_without_an_account(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services,
    path: str,
) -> None:
    """What the time of an answer could tell (ASVS 6.3.8): a wrong code for an address
    without an account, for an account without a live code, and for one with a live code
    runs the same statements, so the answer costs the same round trips."""
    with_code = await register_user(http, mail_sink, verify=False)
    await request_reset_code(http, mail_sink, with_code.email)
    without_code = await factory.user(is_verified=False)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "email_codes" in statement or "FROM users" in statement:
            statements.append(" ".join(statement.split()))

    body = {"code": "000000", "new_password": NEW_PASSWORD}
    if path == "/auth/verify-email":
        del body["new_password"]
    runs = []
    for email in (unique_email("nobody"), without_code.email, with_code.email):
        statements.clear()
        event.listen(services.engine.sync_engine, "before_cursor_execute", record)
        try:
            response = await http.post(path, json={**body, "email": email})
        finally:
            event.remove(services.engine.sync_engine, "before_cursor_execute", record)
        assert_body(response, 400, INVALID_CODE)
        runs.append(list(statements))
    assert len(runs[0]) == 2  # the user's lookup, the code's one UPDATE
    assert runs[0] == runs[1] == runs[2]


# --- storage ----------------------------------------------------------------------------


async def test_code_is_stored_only_as_a_keyed_digest(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    user = await factory.user()
    code = await request_reset_code(http, mail_sink, user.email)
    async with services.engine.connect() as conn:
        row = (await conn.execute(
            select(EmailCode.__table__).where(
                EmailCode.__table__.c.user_id == uuid.UUID(user.id))
        )).mappings().one()
    digest = row["code_hash"]
    assert isinstance(digest, bytes)
    assert len(digest) == 32
    unkeyed = [code, f"{user.id}:{Purpose.RESET_PASSWORD.value}:{code}",
               f"{user.id}:{Purpose.RESET_PASSWORD.value}:{user.email}:{code}",
               f"{user.id}:{code}", f"{user.email}:{code}"]
    for message in unkeyed:
        assert digest != hashlib.sha256(message.encode()).digest()
    assert code.encode() not in digest
    for name, value in row.items():
        assert code not in str(value), name
    assert row["purpose"] == "reset_password"
    assert row["target_email"] is None


# --- resend throttle --------------------------------------------------------------------


async def test_resend_throttle_answers_202_but_sends_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user = await factory.user()
    codes = [await request_reset_code(http, mail_sink, user.email) for _ in range(3)]
    response = await http.post("/auth/forgot-password", json={"email": user.email})
    assert_body(response, 202, ACCEPTED)
    # The ASGI transport returns once the request's mail work is done: none was sent.
    assert subjects(mail_sink, user.email) == [SUBJECT_RESET] * 3
    # The throttled request did not replace the last code either.
    assert_body(await reset(http, user.email, codes[-1]), 200, {"status": "password_reset"})


async def test_verification_resend_throttle_counts_the_registration_mail(
    http: httpx.AsyncClient, mail_sink: SmtpSink
) -> None:
    user = await register_user(http, mail_sink, verify=False)
    await resend_verification(http, user.email)
    await resend_verification(http, user.email)
    last = await last_code(mail_sink, user.email, count=3)
    await resend_verification(http, user.email)  # the 4th within 10 minutes
    assert subjects(mail_sink, user.email) == [SUBJECT_VERIFY] * 3
    assert_body(await verify(http, user.email, last), 200, {"status": "verified"})


@pytest.mark.parametrize("purpose", list(Purpose))
async def test_issue_makes_six_ascii_digits(
    factory: Factory, services: Services, purpose: Purpose
) -> None:
    user = await factory.user()
    async with services.sessions() as session:
        code = await services.accounts.codes.issue(
            session, user_id=uuid.UUID(user.id), purpose=purpose, address=user.email,
            now=services.clock.now())
        await session.rollback()
    assert len(code) == 6
    assert code.isascii()
    assert code.isdigit()
