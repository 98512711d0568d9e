"""GET/PATCH /users/me and POST /users/me/email/confirm: profile and username changes,
the email change (password, code to the new address, notice to the old one), and
mass-assignment attempts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text

from provider.services import Services
from tests.factories import Factory, unique_email
from tests.helpers import assert_oauth_error, bearer, login, password_login
from tests.smtp_sink import SmtpSink, plain_text
from tests.users.flows import (
    BAD_CREDENTIALS,
    INVALID_CODE,
    RATE_LIMITED,
    SUBJECT_CHANGE_EMAIL,
    SUBJECT_EMAIL_NOTICE,
    SUBJECT_RESET,
    WRONG_PASSWORD,
    assert_body,
    credentials,
    extra_forbidden,
    http_client,
    last_code,
    load_user,
    problem,
    request_reset_code,
    subjects,
    users_with_email,
)
from tests.users.test_account_hold import postgres_only

USER_FIELDS = {"id", "email", "username", "profile", "is_verified", "is_active", "is_admin",
               "mfa_enabled", "created_at", "updated_at"}


@pytest_asyncio.fixture(loop_scope="session")
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


async def signed_in(http: httpx.AsyncClient, factory: Factory, **user: Any
                    ) -> tuple[Any, dict[str, str]]:
    account = await factory.user(**user)
    tokens = await login(http, await factory.client(), account)
    return account, bearer(tokens["access_token"])


SUBJECT_TAKEN_ADDRESS = "Someone asked to use your address for another provider account"


async def get_me(http: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    response = await http.get("/users/me", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch_me(http: httpx.AsyncClient, auth: dict[str, str], **body: Any
                   ) -> httpx.Response:
    return await http.patch("/users/me", headers=auth, json=body)


# --- reading and simple updates ---------------------------------------------------------


async def test_me_shows_the_user_and_no_secret(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user, auth = await signed_in(http, factory, username=f"m{unique_email()[5:17]}",
                                 name="Grace")
    body = await get_me(http, auth)
    assert set(body) == USER_FIELDS
    assert body["id"] == user.id
    assert body["email"] == user.email
    assert body["username"] == user.username
    assert body["profile"] == {"name": "Grace"}
    assert (body["is_verified"], body["is_active"], body["is_admin"],
            body["mfa_enabled"]) == (True, True, False, False)


async def test_patch_updates_username_and_profile(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    _, auth = await signed_in(http, factory)
    username = f"New.Name-{unique_email()[5:17]}"
    profile = {"name": "Ada", "given_name": "Ada", "age": 36, "height": 1.65,
               "newsletter": False, "nickname": None}
    response = await patch_me(http, auth, username=username, profile=profile)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == username.lower()
    assert body["profile"] == profile
    assert body["pending_email"] is None
    again = await get_me(http, auth)
    assert again["username"] == username.lower()
    assert again["profile"] == profile
    assert again["updated_at"] >= again["created_at"]


async def test_patch_clears_the_username_with_null(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    _, auth = await signed_in(http, factory, username=f"c{unique_email()[5:17]}")
    response = await patch_me(http, auth, username=None)
    assert response.status_code == 200, response.text
    assert (await get_me(http, auth))["username"] is None


async def test_patch_taken_username_is_409(http: httpx.AsyncClient, factory: Factory) -> None:
    other = await factory.user(username=f"o{unique_email()[5:17]}")
    _, auth = await signed_in(http, factory)
    before = await get_me(http, auth)
    response = await patch_me(http, auth, username=other.username)
    assert_body(response, 409, problem(409, "username_taken", "This username is taken."))
    assert await get_me(http, auth) == before


async def test_patch_invalid_username_is_422(http: httpx.AsyncClient, factory: Factory) -> None:
    _, auth = await signed_in(http, factory)
    response = await patch_me(http, auth, username="no spaces allowed")
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_username"


@pytest.mark.parametrize("profile", [
    {"address": {"city": "London"}},
    {"tags": ["a", "b"]},
    {"bio": "x" * 1001},
    {"": "empty key"},
], ids=["nested-object", "list", "long-string", "empty-key"])
async def test_patch_profile_values_are_flat_and_small(
    http: httpx.AsyncClient, factory: Factory, profile: dict[str, Any]
) -> None:
    _, auth = await signed_in(http, factory, name="Before")
    response = await patch_me(http, auth, profile=profile)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert (await get_me(http, auth))["profile"] == {"name": "Before"}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_a_profile_number_is_finite_everywhere_a_profile_is_written(
    http: httpx.AsyncClient, factory: Factory, services: Services, number: str
) -> None:
    """JSON has no NaN or Infinity, and PostgreSQL's json type refuses them: 422 and
    nothing written (it was a 500 here, and a registration silently dropped)."""
    json = {"Content-Type": "application/json"}
    _, auth = await signed_in(http, factory, name="Before")
    patched = await http.patch("/users/me", headers={**auth, **json},
                               content=f'{{"profile": {{"n": {number}}}}}')
    assert patched.status_code == 422, patched.text
    assert (await get_me(http, auth))["profile"] == {"name": "Before"}
    email = unique_email("nan")
    registered = await http.post("/auth/register", headers=json, content=(
        f'{{"email": "{email}", "password": "a sturdy enough passphrase", '
        f'"profile": {{"n": {number}}}}}'))
    assert registered.status_code == 422, registered.text
    admin = await factory.user(is_admin=True)
    tokens = await login(http, await factory.client(), admin, scope="admin")
    created = await http.post("/admin/users", headers={**bearer(tokens["access_token"]), **json},
                              content=(f'{{"email": "{unique_email("nan-admin")}", '
                                       f'"password": "a sturdy enough passphrase", '
                                       f'"profile": {{"n": {number}}}}}'))
    assert created.status_code == 422, created.text
    async with services.engine.connect() as conn:
        assert (await conn.scalar(text("SELECT count(*) FROM users WHERE email = :e"),
                                  {"e": email})) == 0


async def test_patch_profile_has_at_most_32_keys(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    _, auth = await signed_in(http, factory)
    assert (await patch_me(http, auth, profile={f"k{i}": i for i in range(32)})
            ).status_code == 200
    response = await patch_me(http, auth, profile={f"k{i}": i for i in range(33)})
    assert response.status_code == 422


@pytest.mark.parametrize(("field", "value"), [
    ("is_admin", True), ("is_verified", False), ("is_active", False),
    ("id", "00000000-0000-0000-0000-000000000001"), ("password_hash", "x"),
    ("mfa_enabled", True), ("created_at", "2000-01-01T00:00:00Z"),
])
async def test_patch_mass_assignment_is_422_and_changes_nothing(
    http: httpx.AsyncClient, factory: Factory, field: str, value: Any
) -> None:
    user, auth = await signed_in(http, factory)
    before = await get_me(http, auth)
    response = await patch_me(http, auth, username=f"x{unique_email()[5:17]}",
                              **{field: value})
    assert_body(response, 422, extra_forbidden(field))
    assert await get_me(http, auth) == before
    await login(http, await factory.client(), user)


# --- email change -----------------------------------------------------------------------


async def test_email_change_without_password_is_400(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user, auth = await signed_in(http, factory)
    new_email = unique_email("new")
    for body in ({"email": new_email}, {"email": new_email, "password": ""}):
        response = await http.patch("/users/me", headers=auth, json=body)
        assert_body(response, 400, {
            **WRONG_PASSWORD, "detail": "Changing the email address requires your password."})
    assert (await get_me(http, auth))["email"] == user.email
    assert mail_sink.messages_to(new_email) == []


async def test_email_change_with_wrong_password_is_400(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user, auth = await signed_in(http, factory)
    new_email = unique_email("new")
    response = await patch_me(http, auth, email=new_email, password="not my password")
    assert_body(response, 400, WRONG_PASSWORD)
    assert (await get_me(http, auth))["email"] == user.email
    assert mail_sink.messages_to(new_email) == []


async def test_email_change_sends_a_code_to_the_new_address_and_waits_for_it(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user, auth = await signed_in(http, factory)
    oauth = await factory.client()
    new_email = unique_email("moved")

    response = await patch_me(http, auth, email=new_email.upper(), password=user.password)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pending_email"] == new_email
    assert body["email"] == user.email  # unchanged until confirmed
    [message] = await mail_sink.wait_for(new_email)
    assert message["Subject"] == SUBJECT_CHANGE_EMAIL
    code = await last_code(mail_sink, new_email)
    assert (await get_me(http, auth))["email"] == user.email
    await login(http, oauth, user)  # the old address still signs in meanwhile

    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert_body(await http.post("/users/me/email/confirm", headers=auth, json={"code": wrong}),
                400, INVALID_CODE)
    confirmed = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["email"] == new_email
    assert confirmed.json()["is_verified"] is True
    assert (await get_me(http, auth))["email"] == new_email

    [notice] = await mail_sink.wait_for(user.email)
    assert notice["Subject"] == SUBJECT_EMAIL_NOTICE
    assert f"{new_email[0]}***@example.com" in plain_text(notice)
    assert new_email not in plain_text(notice)
    await login(http, oauth, credentials(new_email, user.password))
    assert_oauth_error(await password_login(http, oauth, user), 400, "invalid_grant",
                       BAD_CREDENTIALS)
    # The code is spent.
    assert_body(await http.post("/users/me/email/confirm", headers=auth, json={"code": code}),
                400, INVALID_CODE)


async def test_email_change_to_a_taken_address_answers_as_for_a_free_one(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """No enumeration (ASVS 6.3.8): the same answer as for a free address; the owner of
    the taken one gets a notice instead of a code, and nothing can be confirmed."""
    other = await factory.user()
    user, auth = await signed_in(http, factory)
    free = unique_email("free")
    answers = [await patch_me(http, auth, email=address, password=user.password)
               for address in (other.email, free)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["pending_email"] for a in answers] == [other.email, free]
    assert answers[0].json().keys() == answers[1].json().keys()
    assert (await get_me(http, auth))["email"] == user.email
    # The ASGI transport returns once the request's mail work is done.
    assert subjects(mail_sink, other.email) == [SUBJECT_TAKEN_ADDRESS]
    assert "code" not in plain_text(mail_sink.messages_to(other.email)[0]).lower()
    # The free address's code is the only one: confirming moves to the free address.
    code = await last_code(mail_sink, free)
    confirmed = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert confirmed.status_code == 200 and confirmed.json()["email"] == free


async def test_email_change_answers_alike_whatever_the_address_windows_hold(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """The windows of an address fill only with mail to an account (three reset requests
    fill a registered address's), so a change whose answer depended on them would say
    which addresses are registered (ASVS 6.3.8): the address's work runs after the
    answer, for a taken address and a free one alike."""
    user, auth = await signed_in(http, factory)
    registered, free = (await factory.user()).email, unique_email("free")
    answers = []
    for address in (registered, free):
        for _ in range(3):
            response = await http.post("/auth/forgot-password", json={"email": address})
            assert response.status_code == 202
        answers.append(await patch_me(http, auth, email=address, password=user.password))
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["pending_email"] for a in answers] == [registered, free]
    assert answers[0].json().keys() == answers[1].json().keys()
    assert subjects(mail_sink, registered) == [SUBJECT_RESET] * 3 + [SUBJECT_TAKEN_ADDRESS]
    # The free address's window was empty: its code went out.
    assert subjects(mail_sink, free) == [SUBJECT_CHANGE_EMAIL]


async def test_email_change_notices_never_crowd_out_the_owners_codes(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """A signed-in stranger who keeps asking to move to someone's address mails its owner
    one notice, from the notices' own window, and is then refused (3 requests per 10
    minutes per account); the owner's reset codes still go out and work."""
    owner = await factory.user()
    stranger, auth = await signed_in(http, factory)
    for _ in range(3):
        response = await patch_me(http, auth, email=owner.email, password=stranger.password)
        assert response.status_code == 200
    refused = await patch_me(http, auth, email=owner.email, password=stranger.password)
    assert_body(refused, 429, RATE_LIMITED)
    assert 1 <= int(refused.headers["retry-after"]) <= 600
    assert subjects(mail_sink, owner.email) == [SUBJECT_TAKEN_ADDRESS]
    code = await request_reset_code(http, mail_sink, owner.email)
    response = await http.post("/auth/reset-password", json={
        "email": owner.email, "code": code, "new_password": "marble otter lantern"})
    assert_body(response, 200, {"status": "password_reset"})
    assert (await get_me(http, auth))["email"] == stranger.email


async def test_the_last_email_change_request_wins_whatever_order_its_mail_work_runs_in(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services,
    clock,
) -> None:
    """The code is issued after the answer: when two requests' work runs in the opposite
    order (a mistyped address corrected at once), the later request's code stands and
    the earlier one sends nothing."""
    from datetime import timedelta

    from provider.users.accounts import Mailbox

    user, auth = await signed_in(http, factory)
    account = await load_user(services, user.id)
    mistyped, meant = unique_email("typo"), unique_email("meant")
    first, second = Mailbox(), Mailbox()
    await services.accounts.request_email_change(first, account, new_email=mistyped,
                                                 password=user.password)
    clock.advance(timedelta(milliseconds=5))
    await services.accounts.request_email_change(second, account, new_email=meant,
                                                 password=user.password)
    await services.accounts.deliver(second)
    await services.accounts.deliver(first)
    assert subjects(mail_sink, mistyped) == []
    code = await last_code(mail_sink, meant)
    confirmed = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert confirmed.status_code == 200 and confirmed.json()["email"] == meant


async def test_a_new_email_change_request_ends_the_last_ones_code_whatever_its_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """ASVS 6.3.8: were the earlier code to live on when the new address is taken, its
    confirmation would tell the caller that the address is registered."""
    someone = await factory.user()
    outcomes = {}
    for label, target in (("taken", someone.email), ("free", unique_email("free"))):
        user, auth = await signed_in(http, factory)
        mine = unique_email("mine")
        assert (await patch_me(http, auth, email=mine, password=user.password)
                ).status_code == 200
        code = await last_code(mail_sink, mine)
        assert (await patch_me(http, auth, email=target, password=user.password)
                ).status_code == 200
        confirmed = await http.post("/users/me/email/confirm", headers=auth,
                                    json={"code": code})
        outcomes[label] = (confirmed.status_code, confirmed.json())
    assert outcomes["taken"] == outcomes["free"] == (400, INVALID_CODE), outcomes
    assert (await get_me(http, auth))["email"] == user.email


async def test_one_account_cannot_mail_any_number_of_addresses(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """Each email change mails an address of the caller's choosing: 3 requests per 10
    minutes per account, whatever the address or the password, counted before both."""
    user, auth = await signed_in(http, factory)
    targets = [unique_email("spray") for _ in range(5)]
    answers = [await patch_me(http, auth, email=target, password=user.password)
               for target in targets[:3]]
    assert [a.status_code for a in answers] == [200, 200, 200]
    for target, password in ((targets[3], user.password), (targets[4], "wrong password")):
        refused = await patch_me(http, auth, email=target, password=password)
        assert_body(refused, 429, RATE_LIMITED)
    for target in targets[:3]:
        await last_code(mail_sink, target)
    # A refused request left no work behind: nothing will come to the others.
    assert [len(subjects(mail_sink, t)) for t in targets] == [1, 1, 1, 0, 0]


async def test_another_account_cannot_keep_an_owner_from_a_code_for_a_new_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    """The window of an email change's codes is the account's and the address's
    together: a stranger who asks to move to an address as often as allowed leaves its
    owner's own request to move there its code."""
    wanted = unique_email("wanted")
    stranger, stranger_auth = await signed_in(http, factory)
    for _ in range(3):
        assert (await patch_me(http, stranger_auth, email=wanted,
                               password=stranger.password)).status_code == 200
    owner, auth = await signed_in(http, factory)
    assert (await patch_me(http, auth, email=wanted, password=owner.password)
            ).status_code == 200
    code = await last_code(mail_sink, wanted, count=4)
    confirmed = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["email"] == wanted


async def test_email_change_to_the_same_address_is_422(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    user, auth = await signed_in(http, factory)
    response = await patch_me(http, auth, email=user.email.upper(), password=user.password)
    assert_body(response, 422, problem(422, "invalid_email", "The email address is not valid.",
                                       detail="This is already your email address."))


async def test_email_change_loses_to_a_registration_of_the_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    """Someone registers the new address before the change is confirmed: 409, no change,
    and the code is spent (a new change request sends a new one)."""
    user, auth = await signed_in(http, factory)
    new_email = unique_email("race")
    assert (await patch_me(http, auth, email=new_email, password=user.password)
            ).status_code == 200
    code = await last_code(mail_sink, new_email)
    await factory.user(email=new_email)
    response = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert_body(response, 409, problem(409, "email_taken",
                                       "A user with this email already exists."))
    assert (await get_me(http, auth))["email"] == user.email
    assert await users_with_email(services, new_email) == 1
    again = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert_body(again, 400, INVALID_CODE)


async def test_email_change_loses_a_race_with_another_account_taking_the_address(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink, services: Services
) -> None:
    """The address is taken after the confirmation checked it and before it wrote it: the
    unique index decides (409), the account keeps its address, and the code is spent as
    when the check itself found the address taken."""
    postgres_only(services)
    user, auth = await signed_in(http, factory)
    other = await factory.user()
    new_email = unique_email("race")
    assert (await patch_me(http, auth, email=new_email, password=user.password)
            ).status_code == 200
    code = await last_code(mail_sink, new_email)
    async with services.engine.connect() as taker:
        # Another account takes the address, not yet committed: the confirmation's check
        # does not see it, and its write waits on the unique index.
        await taker.execute(text("UPDATE users SET email = :email WHERE id = :id"),
                            {"email": new_email, "id": uuid.UUID(other.id)})
        taker_pid = await taker.scalar(text("SELECT pg_backend_pid()"))
        confirm = asyncio.create_task(
            http.post("/users/me/email/confirm", headers=auth, json={"code": code}))
        waiting = 0
        for _ in range(2000):
            async with services.engine.connect() as watch:  # a fresh statistics snapshot
                waiting = await watch.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE 'UPDATE users SET email%'"
                    " AND pid <> :taker"), {"taker": taker_pid})
            if waiting or confirm.done():
                break
            await asyncio.sleep(0.005)
        assert waiting == 1, (await confirm).text if confirm.done() else "never waited"
        await taker.commit()
    response = await asyncio.wait_for(confirm, 30)
    assert_body(response, 409, problem(409, "email_taken",
                                       "A user with this email already exists."))
    assert (await get_me(http, auth))["email"] == user.email
    again = await http.post("/users/me/email/confirm", headers=auth, json={"code": code})
    assert_body(again, 400, INVALID_CODE)


async def test_email_confirm_without_a_pending_change_is_invalid_code(
    http: httpx.AsyncClient, factory: Factory
) -> None:
    _, auth = await signed_in(http, factory)
    response = await http.post("/users/me/email/confirm", headers=auth,
                               json={"code": "123456"})
    assert_body(response, 400, INVALID_CODE)


async def test_email_change_and_profile_in_one_request(
    http: httpx.AsyncClient, factory: Factory, mail_sink: SmtpSink
) -> None:
    user, auth = await signed_in(http, factory)
    new_email = unique_email("both")
    response = await patch_me(http, auth, email=new_email, password=user.password,
                              profile={"locale": "en-GB"})
    assert response.status_code == 200, response.text
    assert response.json()["profile"] == {"locale": "en-GB"}
    assert response.json()["pending_email"] == new_email
    await mail_sink.wait_for(new_email)


async def test_a_refused_part_of_a_patch_writes_nothing_of_the_others(
    http: httpx.AsyncClient, factory: Factory, services: Services, mail_sink: SmtpSink
) -> None:
    """An email change with a taken username: 409, and no code, no audit event, no mail;
    the profile sent with it is not stored either."""
    from sqlalchemy import func, select

    from provider.audit.models import AuditEvent
    from provider.codes.models import EmailCode

    taken = f"t{unique_email()[5:17]}"
    await factory.user(username=taken)
    user, auth = await signed_in(http, factory)
    before = await get_me(http, auth)
    new_email = unique_email("half")
    response = await patch_me(http, auth, email=new_email, password=user.password,
                              username=taken, profile={"city": "Lyon"})
    assert_body(response, 409, problem(409, "username_taken", "This username is taken."))
    assert await get_me(http, auth) == before
    async with services.sessions() as session:
        user_id = uuid.UUID(user.id)
        codes = await session.scalar(select(func.count()).select_from(EmailCode)
                                     .where(EmailCode.user_id == user_id))
        events = await session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_user_id == user_id,
            AuditEvent.type == "email.change_requested"))
    assert (codes, events) == (0, 0)
    # The same request without the taken username goes through.
    fine = await patch_me(http, auth, email=new_email, password=user.password,
                          profile={"city": "Lyon"})
    assert fine.status_code == 200, fine.text
    [message] = await mail_sink.wait_for(new_email)
    assert message["Subject"] == SUBJECT_CHANGE_EMAIL
