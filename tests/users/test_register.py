"""POST /auth/register end to end: mail through a real SMTP server, verification, login,
conflicts, policy, mass assignment, closed registration and the per-address throttle."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import insert, select

from provider.services import Services
from provider.settings import Settings
from provider.users.models import User
from tests.conftest import TestClock as MovableClock
from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, bearer, login, password_login, refresh
from tests.smtp_sink import SmtpSink, plain_text
from tests.users.flows import (
    BAD_CREDENTIALS,
    GOOD_PASSWORD,
    INVALID_CODE,
    REGISTER_ACCEPTED,
    SUBJECT_EXISTS,
    SUBJECT_RESET,
    SUBJECT_VERIFY,
    UNVERIFIED,
    assert_body,
    credentials,
    extra_forbidden,
    http_client,
    last_code,
    own_app,
    problem,
    register,
    register_user,
    request_reset_code,
    subjects,
    users_with_email,
    weak_password,
)

STRONG = "Tq7-mirth-Oxbow-"
OTHER = "granite walrus opera"


def exactly(length: int) -> str:
    return (STRONG * (length // len(STRONG) + 1))[:length]


def fullwidth(text: str) -> str:
    """The same ASCII text typed in fullwidth forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


# --- the happy path ---------------------------------------------------------------------


async def test_register_mails_a_code_then_verify_then_login(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    oauth = await factory.client()
    email = unique_email("new")
    response = await register(http, email, username=f"u{email[4:16]}",
                              profile={"name": "Ada", "age": 36, "beta": True})
    assert_body(response, 202, REGISTER_ACCEPTED)
    [message] = await mail_sink.wait_for(email)
    assert message["Subject"] == SUBJECT_VERIFY
    code = await last_code(mail_sink, email)

    user = credentials(email, GOOD_PASSWORD)
    # Not verified yet: the right password learns why; a wrong one learns nothing.
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       UNVERIFIED)
    wrong = credentials(email, "not the password at all")
    assert_oauth_error(await password_login(http, oauth, wrong), 400, "invalid_grant",
                       BAD_CREDENTIALS)

    verified = await http.post("/auth/verify-email", json={"email": email, "code": code})
    assert_body(verified, 200, {"status": "verified"})

    tokens = await login(http, oauth, user)
    me = (await http.get("/users/me", headers=bearer(tokens["access_token"]))).json()
    assert me["email"] == email
    assert me["username"] == f"u{email[4:16]}"
    assert me["profile"] == {"name": "Ada", "age": 36, "beta": True}
    assert me["is_verified"] is True
    assert me["is_admin"] is False
    assert "password_hash" not in me


async def test_register_normalises_the_email_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    email = unique_email("case")
    await register_user(http, mail_sink, email=email.upper().replace("@EXAMPLE.COM",
                                                                        "@Example.com"))
    oauth = await factory.client()
    await login(http, oauth, credentials(email, GOOD_PASSWORD))


async def test_register_with_a_taken_email_answers_alike_and_mails_the_owner(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    owner = await factory.user()
    fresh = unique_email("fresh")
    taken = await register(http, owner.email.upper(), OTHER)
    new = await register(http, fresh, OTHER)
    assert_body(taken, 202, REGISTER_ACCEPTED)
    assert_body(new, 202, REGISTER_ACCEPTED)

    [notice] = await mail_sink.wait_for(owner.email)
    assert notice["Subject"] == SUBJECT_EXISTS
    assert "http://127.0.0.1:8000" in plain_text(notice)
    assert mail_sink.codes_for(owner.email) == []  # no code: nothing to verify
    assert await users_with_email(services, owner.email) == 1
    # The owner's account is untouched: the old password works, the new one does not.
    oauth = await factory.client()
    await login(http, oauth, owner)
    stranger = credentials(owner.email, OTHER)
    assert_oauth_error(await password_login(http, oauth, stranger), 400, "invalid_grant",
                       BAD_CREDENTIALS)


async def test_notices_of_a_taken_email_have_a_window_of_their_own(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """Registering someone's address again and again mails its owner one notice
    (PROVIDER_EMAIL_NOTICE_THROTTLE, 1 per 10 minutes), and the notices never take the
    slots of the owner's codes (PROVIDER_EMAIL_CODE_THROTTLE): a reset code still goes."""
    owner = await factory.user()
    for _ in range(5):
        assert_body(await register(http, owner.email, OTHER), 202, REGISTER_ACCEPTED)
    # The ASGI transport returns once the background mail work is done.
    assert subjects(mail_sink, owner.email) == [SUBJECT_EXISTS]
    code = await request_reset_code(http, mail_sink, owner.email)
    assert subjects(mail_sink, owner.email) == [SUBJECT_EXISTS, SUBJECT_RESET]
    response = await http.post("/auth/reset-password", json={
        "email": owner.email, "code": code, "new_password": OTHER})
    assert_body(response, 200, {"status": "password_reset"})


async def test_register_taken_username_is_409_and_creates_nothing(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    existing = await factory.user(username=f"ada-{unique_email()[5:17]}")
    assert existing.username is not None
    email = unique_email("dup")
    response = await register(http, email, username=existing.username.upper())
    assert_body(response, 409, problem(409, "username_taken", "This username is taken."))
    assert await users_with_email(services, email) == 0
    assert mail_sink.messages_to(email) == []


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com",
                                   "spaces in@example.com"])
async def test_register_invalid_email_is_422(
    http: httpx.AsyncClient, email: str
) -> None:
    response = await register(http, email)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body.pop("detail")  # what is wrong with it, from the validator
    assert body == problem(422, "invalid_email", "The email address is not valid.")


# --- password policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "detail"),
    [
        (exactly(7), "The password must be at least 8 characters long."),
        (exactly(1025), "The password must be at most 1024 characters long."),
        ("Password123", "The password is on a list of commonly used or breached passwords; "
                        "choose a different one."),
        (fullwidth("password123"), "The password is on a list of commonly used or breached "
                                "passwords; choose a different one."),
        ("Ada.Lovelace.1815", "The password must not be the same as your email's local "
                              "part (the part before the @)."),
        # 8 code points typed, 7 after NFKC composes the accent: too short.
        ("abcdefe\u0301", "The password must be at least 8 characters long."),
    ],
    ids=["7-chars", "1025-chars", "blocklisted", "blocklisted-fullwidth", "local-part",
         "short-after-nfkc"],
)
async def test_register_weak_password_is_422_with_the_rule(
    http: httpx.AsyncClient, mail_sink: SmtpSink, services: Services, password: str,
    detail: str
) -> None:
    email = f"ada.lovelace.1815@{secrets.token_hex(4)}.example.com"
    response = await register(http, email, password)
    assert_body(response, 422, weak_password(detail))
    assert await users_with_email(services, email) == 0
    assert mail_sink.messages_to(email) == []


@pytest.mark.parametrize("length", [8, 64, 1024])
async def test_register_accepts_password_lengths_and_logs_in(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, length: int
) -> None:
    user = await register_user(http, mail_sink, password=exactly(length))
    await login(http, await factory.client(), user)


async def test_register_fullwidth_password_logs_in_with_its_ascii_form(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    ascii_form = "Kiwi Orbit 42!"
    user = await register_user(http, mail_sink, password=fullwidth(ascii_form))
    oauth = await factory.client()
    await login(http, oauth, credentials(user.email, ascii_form))
    await login(http, oauth, user)  # and as typed


async def test_register_emoji_password_of_eight_code_points(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    password = "\U0001f40d\U0001f511\U0001f98a\U0001f335\U0001f3b2\U0001f9e9\U0001f6b2\U0001f34b"
    assert len(password) == 8
    user = await register_user(http, mail_sink, password=password)
    oauth = await factory.client()
    await login(http, oauth, user)
    seven = credentials(unique_email("emoji"), password[:7])
    assert_body(await register(http, seven.email, seven.password),
                422, weak_password("The password must be at least 8 characters long."))


# --- mass assignment and shape ----------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("is_admin", True), ("is_verified", True), ("id", "00000000-0000-0000-0000-000000000001"),
    ("password_hash", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA"),
    ("is_active", True),
])
async def test_register_unknown_field_is_422_and_creates_nothing(
    http: httpx.AsyncClient, mail_sink: SmtpSink, services: Services, field: str,
    value: object
) -> None:
    email = unique_email("mass")
    response = await register(http, email, **{field: value})
    assert_body(response, 422, extra_forbidden(field))
    assert await users_with_email(services, email) == 0
    assert mail_sink.messages_to(email) == []


@pytest.mark.parametrize("body", [
    b'{"email": "a@example.com", "password', b"\x80r\x81\x08",
    b'{"email": "\xff@example.com"}',
    b"[" * 30_000,  # past the decoder's recursion limit
    b'{"profile": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001,
    b'{"email": "a@example.com", "n": ' + b"9" * 5_000 + b"}",  # past int's digit limit
], ids=["truncated", "not-utf8", "not-utf8-in-a-string", "deep-array", "deep-object",
        "long-integer"])
async def test_register_malformed_json_is_the_documented_422(
    http: httpx.AsyncClient, body: bytes
) -> None:
    """Broken JSON, UTF-8 or not, or more than the decoder takes (FastAPI's own answer to
    all but the first is a bare 400)."""
    response = await http.post("/auth/register", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert [e["type"] for e in response.json()["errors"]] == ["json_invalid"]


@pytest.mark.parametrize("profile", [{"name": {"first": "Ada"}}, {"tags": ["a", "b"]}])
async def test_register_profile_values_are_flat(
    http: httpx.AsyncClient, services: Services, profile: dict[str, object]
) -> None:
    email = unique_email("flat")
    response = await register(http, email, profile=profile)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert await users_with_email(services, email) == 0


# --- closed registration and throttling --------------------------------------------------


async def test_register_closed_is_403(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink, services: Services
) -> None:
    email = unique_email("closed")
    async with own_app(settings, clock, mail_sink, registration_open=False) as closed, \
            closed.client() as http:
        response = await register(http, email)
    assert_body(response, 403, problem(403, "registration_closed",
                                       "Self-registration is closed on this server."))
    assert await users_with_email(services, email) == 0


async def test_register_throttle_per_client_address_is_429_with_retry_after(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink, services: Services
) -> None:
    async with own_app(settings, clock, mail_sink, registration_throttle="2 per hour") as own:
        async with own.client() as http:
            for _ in range(2):
                assert_body(await register(http, unique_email("thr")), 202, REGISTER_ACCEPTED)
            email = unique_email("thr")
            response = await register(http, email)
            assert_body(response, 429, problem(429, "rate_limited",
                                               "Too many requests. Try again later."))
            assert 1 <= int(response.headers["retry-after"]) <= 3600
            assert await users_with_email(services, email) == 0
        async with own.client() as elsewhere:  # another address is not affected
            assert_body(await register(elsewhere, email), 202, REGISTER_ACCEPTED)
    assert subjects(mail_sink, email) == [SUBJECT_VERIFY]


# --- a registration nobody verified (pre-account hijacking) -------------------------------


async def stored_user(services: Services, email: str) -> User:
    async with services.sessions() as session:
        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None
        return user


async def test_a_stranger_who_registered_an_address_first_does_not_get_the_owners_account(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    """A stranger registers someone's address (unverified, the stranger's password and
    username). The owner registers it in turn: that registration replaces the earlier
    one and mails its own code, which kills the stranger's. The verified account signs
    in with the owner's password only."""
    oauth = await factory.client()
    address = unique_email("owner")
    squatted = f"squat_{secrets.token_hex(4)}"
    assert_body(await register(http, address, OTHER, username=squatted), 202,
                REGISTER_ACCEPTED)
    strangers_code = await last_code(mail_sink, address)
    assert_body(await register(http, address, STRONG), 202, REGISTER_ACCEPTED)
    owners_code = await last_code(mail_sink, address, count=2)
    assert subjects(mail_sink, address) == [SUBJECT_VERIFY, SUBJECT_VERIFY]
    stale = await http.post("/auth/verify-email", json={"email": address,
                                                        "code": strangers_code})
    assert_body(stale, 400, INVALID_CODE)
    verified = await http.post("/auth/verify-email", json={"email": address,
                                                           "code": owners_code})
    assert verified.status_code == 200, verified.text
    owner = await password_login(http, oauth, credentials(address, STRONG))
    assert owner.status_code == 200, owner.text
    stranger = await password_login(http, oauth, credentials(address, OTHER))
    assert_oauth_error(stranger, 400, "invalid_grant", BAD_CREDENTIALS)
    account = await stored_user(services, address)
    assert (account.username, account.is_registration_pending) == (None, False)
    # Verified, the account is the owner's: a registration now only tells the owner.
    assert_body(await register(http, address, OTHER), 202, REGISTER_ACCEPTED)
    await mail_sink.wait_for(address, count=3)
    assert subjects(mail_sink, address)[-1] == SUBJECT_EXISTS
    assert (await password_login(http, oauth, credentials(address, STRONG))).status_code == 200


async def test_the_last_registration_of_an_unverified_address_wins_whatever_order_its_work_runs_in(
    services: Services, mail_sink: SmtpSink, clock: MovableClock, http: httpx.AsyncClient,
) -> None:
    """The registrations' work runs after their answers: when it runs in the opposite
    order, the later registration's code and password stand together, and the earlier
    one changes nothing."""
    from datetime import timedelta

    from provider.users.accounts import Mailbox

    address = unique_email("twice")
    assert_body(await register(http, address, OTHER), 202, REGISTER_ACCEPTED)
    await last_code(mail_sink, address)
    earlier, later = Mailbox(), Mailbox()
    for mailbox, password in ((earlier, "first lantern harbor"), (later, STRONG)):
        async with services.sessions() as session:
            await services.accounts.register(session, mailbox, email=address,
                                             password=password, username=None, profile={},
                                             client_address="192.0.2.7")
        clock.advance(timedelta(milliseconds=5))
    await services.accounts.deliver(later)
    await services.accounts.deliver(earlier)
    assert len(mail_sink.messages_to(address)) == 2  # the earlier one mailed nothing
    code = await last_code(mail_sink, address, count=2)
    verified = await http.post("/auth/verify-email", json={"email": address, "code": code})
    assert verified.status_code == 200, verified.text
    account = await stored_user(services, address)
    assert (await services.hasher.verify(STRONG, account.password_hash))[0]


async def test_a_registration_changes_nothing_of_an_account_an_administrator_made(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    """An unverified account that an administrator created is nobody's registration to
    replace: the registration mails its owner a notice, as for a verified one."""
    made = await factory.user(is_verified=False)
    assert_body(await register(http, made.email, OTHER), 202, REGISTER_ACCEPTED)
    await mail_sink.wait_for(made.email, count=1)
    assert subjects(mail_sink, made.email) == [SUBJECT_EXISTS]
    account = await stored_user(services, made.email)
    assert not account.is_registration_pending
    assert (await services.hasher.verify(made.password, account.password_hash))[0]


async def test_a_registration_replaces_no_pending_account_an_administrator_took_in_hand(
    http: httpx.AsyncClient, mail_sink: SmtpSink, services: Services, clock: MovableClock,
) -> None:
    """Disabled, promoted, edited by an administrator: the account is no one's
    registration to replace any more; a registration mails its owner a notice."""
    from provider.users.service import update_user_admin

    for change in ({"is_active": False}, {"is_admin": True}, {"profile": {"name": "Set"}}):
        address = unique_email("in-hand")
        assert_body(await register(http, address, STRONG), 202, REGISTER_ACCEPTED)
        await last_code(mail_sink, address)
        before = await stored_user(services, address)
        async with services.sessions() as session:
            await update_user_admin(session, before.id, change, actor_id=None,
                                    now=clock.now())
            await session.commit()
        assert_body(await register(http, address, OTHER, profile={"name": "other"}), 202,
                    REGISTER_ACCEPTED)
        await mail_sink.wait_for(address, count=2)
        assert subjects(mail_sink, address) == [SUBJECT_VERIFY, SUBJECT_EXISTS], change
        after = await stored_user(services, address)
        assert after.password_hash == before.password_hash, change
        assert not after.is_registration_pending


async def test_without_required_verification_an_unverified_account_is_nobodys_to_replace(
    settings: Settings, clock: MovableClock, mail_sink: SmtpSink, factory: Factory,
) -> None:
    """PROVIDER_REQUIRE_VERIFIED_EMAIL=false: an unverified account signs in and is in
    use, so a later registration of its address changes nothing of it (the defence needs
    verification; README)."""
    oauth = await factory.client()
    address = unique_email("in-use")
    async with own_app(settings, clock, mail_sink, require_verified_email=False) as own, \
            own.client() as http:
        assert_body(await register(http, address, STRONG), 202, REGISTER_ACCEPTED)
        await last_code(mail_sink, address)
        signed_in = await password_login(http, oauth, credentials(address, STRONG))
        assert signed_in.status_code == 200, signed_in.text
        assert_body(await register(http, address, OTHER), 202, REGISTER_ACCEPTED)
        await mail_sink.wait_for(address, count=2)
        assert subjects(mail_sink, address) == [SUBJECT_VERIFY, SUBJECT_EXISTS]
        again = await password_login(http, oauth, credentials(address, STRONG))
        assert again.status_code == 200, again.text
        refreshed = await refresh(http, oauth, signed_in.json()["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text


async def test_a_registration_that_loses_the_race_to_insert_carries_on_as_the_later_one(
    services: Services, mail_sink: SmtpSink, http: httpx.AsyncClient,
) -> None:
    """Two registrations of a new address at once both find it free; the one whose insert
    loses (it waits on the other's, then finds the address taken) is handled as if the
    other had come first: it replaces the pending registration and mails its code. It
    used to fail, logged, and its registrant heard nothing."""
    import asyncio

    from provider.users.accounts import Mailbox
    from tests.users.test_account_hold import postgres_only, waits_on_a_lock

    postgres_only(services)
    address = unique_email("race")
    first_hash = await services.hasher.hash(OTHER)
    mailbox = Mailbox()
    async with services.sessions() as session:
        await services.accounts.register(session, mailbox, email=address, password=STRONG,
                                         username=None, profile={}, client_address="192.0.2.9")
    async with services.engine.connect() as conn:
        first = await conn.begin()  # the other registration's insert, not yet committed
        now = services.clock.now()
        await conn.execute(insert(User).values(
            id=uuid.uuid4(), email=address, password_hash=first_hash, profile={},
            is_active=True, is_verified=False, is_admin=False, is_registration_pending=True,
            created_at=now, updated_at=now))
        work = asyncio.create_task(services.accounts.deliver(mailbox))
        assert await waits_on_a_lock(services, work)
        await first.commit()
    await asyncio.wait_for(work, 30)
    code = await last_code(mail_sink, address)
    verified = await http.post("/auth/verify-email", json={"email": address, "code": code})
    assert verified.status_code == 200, verified.text
    account = await stored_user(services, address)
    assert (await services.hasher.verify(STRONG, account.password_hash))[0]
