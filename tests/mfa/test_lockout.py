"""Wrong second-factor codes in a row lock the second factor (NIST SP 800-63B §3.2.2).

An app of its own with PROVIDER_MFA_LOCKOUT_FAILURES=4 and a throttle wide enough not
to interfere, on the shared database: both ways of finishing a sign-in count, a right
code starts the count again, the code that reaches the limit is answered as wrong and
the owner is emailed once, then no code is checked (a right TOTP code, a recovery code)
until an administrator removes the authenticator. Parallel submissions take exactly the
places left.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from provider.app import create_app
from provider.mfa.models import TotpAuthenticator
from provider.services import Services
from tests.audit.helpers import events
from tests.conftest import TestClock, make_settings
from tests.factories import Factory, TestClient, TestUser
from tests.helpers import password_login
from tests.mfa.helpers import (
    WRONG_CODE,
    assert_answer,
    enrol,
    finish,
    mfa_token,
    next_code,
)
from tests.smtp_sink import SmtpSink

LIMIT = 4
LOCKED = {"error": "invalid_grant",
          "error_description": "Two-step verification is locked after too many wrong codes "
                               "in a row; an administrator must reset it."}


@pytest_asyncio.fixture(loop_scope="session")
async def locking_app(settings_keys: tuple[str, Path], clock: TestClock,
                      mail_sink: SmtpSink) -> AsyncIterator[FastAPI]:
    database_url, keys_dir = settings_keys
    app = create_app(make_settings(database_url, keys_dir, smtp_url=mail_sink.url,
                                   mfa_lockout_failures=LIMIT,
                                   mfa_throttle_account="1000 per minute"), clock=clock)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(loop_scope="session")
async def http(locking_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=locking_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        yield c


def wrong(right: str) -> str:
    return f"{(int(right) + 1) % 1_000_000:06d}"


async def locked_notices(mail_sink: SmtpSink, address: str) -> list[EmailMessage]:
    subject = f"Your provider sign-in is locked after {LIMIT} wrong codes"
    for _ in range(50):
        found = [m for m in mail_sink.messages_to(address) if m["Subject"] == subject]
        if found:
            return found
        await asyncio.sleep(0.1)
    return []


async def failures(services: Services, user_id: str) -> int:
    async with services.engine.connect() as conn:
        return int((await conn.execute(select(TotpAuthenticator.failures).where(
            TotpAuthenticator.user_id == uuid.UUID(user_id)))).scalar_one())


@dataclass
class Enrolled:
    services: Services
    user: TestUser
    oauth: TestClient
    secret: str
    recovery_codes: list[str]
    right: str  # a code of the next step, not used yet


@pytest_asyncio.fixture(loop_scope="session")
async def enrolled(http: httpx.AsyncClient, locking_app: FastAPI, factory: Factory,
                   clock: TestClock) -> Enrolled:
    user, oauth = await factory.user(), await factory.client()
    made = await enrol(http, clock, oauth, user)
    return Enrolled(locking_app.state.services, user, oauth, made.secret,
                    made.recovery_codes, next_code(clock, made.secret))


async def test_wrong_codes_in_a_row_lock_the_second_factor_until_an_admin_resets_it(
    http: httpx.AsyncClient, enrolled: Enrolled, factory: Factory, clock: TestClock,
    mail_sink: SmtpSink,
) -> None:
    services, user, oauth, right = (enrolled.services, enrolled.user, enrolled.oauth,
                                    enrolled.right)
    # One short of the limit, over both ways of finishing; then a right code: the count
    # starts again.
    for i in range(LIMIT - 1):
        answer = (await finish(http, oauth, await mfa_token(http, oauth, user), wrong(right))
                  if i % 2 else await password_login(http, oauth, user, otp=wrong(right)))
        assert_answer(answer, 400, WRONG_CODE)
    assert await failures(services, user.id) == LIMIT - 1
    signed_in = await password_login(http, oauth, user, otp=right)
    assert signed_in.status_code == 200, signed_in.text
    assert await failures(services, user.id) == 0

    # LIMIT wrong codes in a row: the last one is still answered as wrong, and locks.
    right = next_code(clock, enrolled.secret)
    for _ in range(LIMIT):
        assert_answer(await password_login(http, oauth, user, otp=wrong(right)), 400,
                      WRONG_CODE)
    [notice] = await locked_notices(mail_sink, user.email)
    body = notice.get_body(("plain",))
    assert body is not None and 'Reset it now with "Forgot your password?"' in " ".join(
        body.get_content().split())
    # No code is checked now: not the right one, not a recovery code, either way.
    token = await mfa_token(http, oauth, user)
    for answer in (await password_login(http, oauth, user, otp=right),
                   await finish(http, oauth, token, right),
                   await finish(http, oauth, token, enrolled.recovery_codes[0])):
        assert_answer(answer, 400, LOCKED)
    assert await failures(services, user.id) == LIMIT
    assert len(await locked_notices(mail_sink, user.email)) == 1  # one notice
    trail = await events(services, user_id=user.id)
    assert [e["type"] for e in trail].count("mfa.locked") == 1
    reasons = Counter(e["details"].get("reason") for e in trail if e["type"] == "login")
    assert reasons["mfa_locked"] == 3
    # The refused submissions used no attempt of the mfa_token: it still takes a code
    # once an administrator has removed the authenticator and the user enrolled again.
    admin = await factory.user(is_admin=True)
    tokens = (await password_login(http, oauth, admin, scope="admin")).json()
    reset = await http.delete(f"/admin/users/{user.id}/mfa",
                              headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert reset.status_code == 204, reset.text
    assert (await password_login(http, oauth, user)).status_code == 200
    again = await enrol(http, clock, oauth, user)
    assert await failures(services, user.id) == 0
    done = await finish(http, oauth, await mfa_token(http, oauth, user),
                        next_code(clock, again.secret))
    assert done.status_code == 200, done.text


async def test_parallel_wrong_codes_take_exactly_the_places_left(
    http: httpx.AsyncClient, enrolled: Enrolled, mail_sink: SmtpSink,
) -> None:
    services, user, oauth, right = (enrolled.services, enrolled.user, enrolled.oauth,
                                    enrolled.right)
    # Four mfa_tokens, four submissions each (a token takes five): only the count of
    # wrong codes in a row limits them.
    tokens = [await mfa_token(http, oauth, user) for _ in range(4)]
    start = asyncio.Event()

    async def guess(token: str) -> httpx.Response:
        await start.wait()
        return await finish(http, oauth, token, wrong(right))

    tasks = [asyncio.create_task(guess(tokens[i % 4])) for i in range(4 * LIMIT)]
    await asyncio.sleep(0)
    start.set()
    answers = await asyncio.gather(*tasks)
    bodies = Counter("locked" if a.json() == LOCKED else "wrong" if a.json() == WRONG_CODE
                     else a.text for a in answers)
    assert bodies == Counter({"wrong": LIMIT, "locked": 3 * LIMIT})
    assert await failures(services, user.id) == LIMIT
    assert len(await locked_notices(mail_sink, user.email)) == 1


async def test_a_sign_in_without_a_verdict_on_its_code_gives_its_place_back(
    http: httpx.AsyncClient, enrolled: Enrolled
) -> None:
    """Its mfa_token used meanwhile, a database fault, a cancelled request: the grants and
    the login page call ``unchecked``, and only wrong codes stay in the count."""
    services, user, oauth, right = (enrolled.services, enrolled.user, enrolled.oauth,
                                    enrolled.right)
    for _ in range(LIMIT - 1):
        assert_answer(await password_login(http, oauth, user, otp=wrong(right)), 400,
                      WRONG_CODE)
    user_id = uuid.UUID(user.id)
    assert await services.mfa.reserve(user_id) is True  # the last place: a wrong code locks
    await services.mfa.unchecked(user_id)
    assert await failures(services, user.id) == LIMIT - 1
    signed_in = await password_login(http, oauth, user, otp=right)
    assert signed_in.status_code == 200, signed_in.text
    await services.mfa.unchecked(user_id)  # never below 0
    assert await failures(services, user.id) == 0
