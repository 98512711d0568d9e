"""MFA inside the password grant: 403 mfa_required, finishing with `otp` or with the
mfa-otp grant, recovery codes, the replay guard and the step window, mfa_token rules,
amr/auth_time, and a password reset that does not bypass the second factor."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from provider.mfa.models import MfaToken
from provider.services import Services
from tests.conftest import TestClock
from tests.factories import Factory
from tests.helpers import TOKEN, assert_no_store, assert_oauth_error, bearer, password_login
from tests.helpers import refresh as refresh_grant
from tests.mfa.helpers import (
    BAD_MFA_TOKEN,
    MFA_OTP,
    MFA_REQUIRED_DESCRIPTION,
    RECOVERY_AMR,
    SLOW_DOWN,
    STEP,
    TOTP_AMR,
    WRONG_CODE,
    assert_answer,
    code_at,
    enrol,
    finish,
    freeze_in_a_step,
    mfa_token,
    next_code,
)
from tests.oauth.helpers import unverified
from tests.smtp_sink import SmtpSink, plain_text
from tests.users.flows import request_reset_code

BAD_CREDENTIALS = "Invalid username or password."


def assert_tokens(body: dict, amr: list[str], auth_time: int) -> None:
    """Access and ID token both carry the sign-in's amr and auth_time."""
    _, access = unverified(body["access_token"])
    _, id_token = unverified(body["id_token"])
    for claims in (access, id_token):
        assert claims["amr"] == amr, claims
        assert claims["auth_time"] == auth_time, claims


async def test_password_alone_answers_mfa_required(client: httpx.AsyncClient,
                                                   factory: Factory, clock: TestClock,
                                                   services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    await enrol(client, clock, oauth, user)

    response = await password_login(client, oauth, user, scope="openid")
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/json"
    assert_no_store(response)
    body = response.json()
    assert body == {"error": "mfa_required", "error_description": MFA_REQUIRED_DESCRIPTION,
                    "mfa_token": body["mfa_token"]}
    assert len(body["mfa_token"]) >= 43  # 256 bits
    # Stored only as a digest, bound to user, client and scope, for 5 minutes.
    async with services.engine.connect() as conn:
        row = (await conn.execute(select(MfaToken).where(
            MfaToken.user_id == uuid.UUID(user.id)))).one()
    assert body["mfa_token"].encode() not in row.token_hash
    assert (row.client_id, row.scope, row.attempts, row.used_at) == (
        oauth.client_id, "openid", 0, None)
    assert row.expires_at - row.created_at == timedelta(minutes=5)


async def test_wrong_password_of_an_mfa_user_is_invalid_grant(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    await enrol(client, clock, oauth, user)
    for extra in ({}, {"otp": next_code(clock, "A" * 32)}):
        response = await client.post(TOKEN, auth=oauth.auth, data={
            "grant_type": "password", "username": user.email, "password": "wrong password!",
            **extra})
        assert_oauth_error(response, 400, "invalid_grant", BAD_CREDENTIALS)


async def test_password_grant_with_otp_signs_in(client: httpx.AsyncClient, factory: Factory,
                                                clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)

    code = next_code(clock, enrolled.secret)
    response = await password_login(client, oauth, user, scope="openid profile", otp=code)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "openid profile"
    assert_tokens(body, TOTP_AMR, int(clock.now().timestamp()))
    # The same code again, even with the right password: refused (RFC 6238 §5.2).
    again = await password_login(client, oauth, user, otp=code)
    assert_answer(again, 400, WRONG_CODE)


async def test_mfa_otp_grant_finishes_the_sign_in(client: httpx.AsyncClient,
                                                  factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user, scope="openid email account")
    signed_in_at = int(clock.now().timestamp())

    clock.advance(timedelta(seconds=31))
    response = await finish(client, oauth, token, code_at(enrolled.secret, clock.now()))
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope",
                         "refresh_token", "id_token"}
    assert body["scope"] == "openid email account"  # the scope of the password step
    # auth_time is when the second factor completed the sign-in.
    assert_tokens(body, TOTP_AMR, signed_in_at + 31)
    me = await client.get("/users/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["mfa_enabled"] is True

    # Single use: the token is spent, also with a fresh code.
    reuse = await finish(client, oauth, token, next_code(clock, enrolled.secret))
    assert_answer(reuse, 400, BAD_MFA_TOKEN)


async def test_refresh_keeps_amr_and_auth_time(client: httpx.AsyncClient, factory: Factory,
                                               clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user, scope="openid")
    body = (await finish(client, oauth, token, next_code(clock, enrolled.secret))).json()
    auth_time = int(clock.now().timestamp())

    clock.advance(timedelta(minutes=3))
    refreshed = await refresh_grant(client, oauth, body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert_tokens(refreshed.json(), TOTP_AMR, auth_time)


async def test_recovery_code_works_once_in_place_of_otp(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock,
        mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    first, second = enrolled.recovery_codes[:2]

    token = await mfa_token(client, oauth, user, scope="openid")
    # As typed by a person: lower case, spaces instead of dashes.
    response = await finish(client, oauth, token, first.lower().replace("-", " "))
    assert response.status_code == 200, response.text
    assert_tokens(response.json(), RECOVERY_AMR, int(clock.now().timestamp()))

    used = await finish(client, oauth, await mfa_token(client, oauth, user), first)
    assert_answer(used, 400, WRONG_CODE)
    # In the password grant's otp too.
    again = await password_login(client, oauth, user, otp=first)
    assert_answer(again, 400, WRONG_CODE)
    other = await password_login(client, oauth, user, scope="openid", otp=second)
    assert other.status_code == 200, other.text
    assert_tokens(other.json(), RECOVERY_AMR, int(clock.now().timestamp()))
    # The owner hears of each sign-in by recovery code (either way of finishing), with
    # how many are left; a TOTP sign-in mails nothing.
    subject = "A recovery code was used to sign in to your provider account"
    notices = [" ".join(plain_text(m).split())
               for m in await mail_sink.wait_for(user.email, count=3)
               if m["Subject"] == subject]
    # Sent after the answers, so in either order.
    assert sorted(left for left in (9, 8) for text in notices
                  if f"{left} of your recovery codes are left" in text) == [8, 9]
    totp = await password_login(client, oauth, user, otp=next_code(clock, enrolled.secret))
    assert totp.status_code == 200, totp.text
    assert len([m for m in mail_sink.messages_to(user.email)
                if m["Subject"] == subject]) == 2


async def test_recovery_code_of_another_user_is_refused(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    oauth = await factory.client()
    alice, bob = await factory.user(), await factory.user()
    await enrol(client, clock, oauth, alice)
    bobs = await enrol(client, clock, oauth, bob)
    response = await password_login(client, oauth, alice, otp=bobs.recovery_codes[0])
    assert_answer(response, 400, WRONG_CODE)


async def test_previous_step_accepted_two_steps_and_next_step_refused(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    secret = enrolled.secret
    clock.advance(5 * STEP)  # steps used so far lie well behind
    now = clock.now()

    for refused in (code_at(secret, now - 2 * STEP), code_at(secret, now + STEP),
                    code_at(secret, now + 2 * STEP)):
        response = await password_login(client, oauth, user, otp=refused)
        assert_answer(response, 400, WRONG_CODE)
    previous = await password_login(client, oauth, user, otp=code_at(secret, now - STEP))
    assert previous.status_code == 200, previous.text
    current = await password_login(client, oauth, user, otp=code_at(secret, now))
    assert current.status_code == 200, current.text


async def test_an_older_step_after_a_newer_one_is_refused(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    """The replay guard is "the last used step", not a set: once the current step's code
    was used, the previous step's (still inside the window) is refused too."""
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    clock.advance(3 * STEP)
    now = clock.now()
    ok = await password_login(client, oauth, user, otp=code_at(enrolled.secret, now))
    assert ok.status_code == 200, ok.text
    older = await password_login(client, oauth, user, otp=code_at(enrolled.secret, now - STEP))
    assert_answer(older, 400, WRONG_CODE)


async def test_mfa_token_expires_after_five_minutes(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)

    clock.advance(timedelta(minutes=5))
    response = await finish(client, oauth, token, code_at(enrolled.secret, clock.now()))
    assert_answer(response, 400, BAD_MFA_TOKEN)


async def test_mfa_token_is_bound_to_its_client(client: httpx.AsyncClient, factory: Factory,
                                               clock: TestClock) -> None:
    user, oauth, other = await factory.user(), await factory.client(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)

    stolen = await finish(client, other, token, next_code(clock, enrolled.secret))
    assert_answer(stolen, 400, BAD_MFA_TOKEN)
    # The owner can still finish (the other client's try counted nothing of it).
    owned = await finish(client, oauth, token, next_code(clock, enrolled.secret))
    assert owned.status_code == 200, owned.text


async def test_mfa_token_is_bound_to_its_scope(client: httpx.AsyncClient, factory: Factory,
                                              clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user, scope="openid")

    for scope in ("openid profile", "email", "openid admin"):
        wider = await finish(client, oauth, token, next_code(clock, enrolled.secret),
                             scope=scope)
        assert_oauth_error(wider, 400, "invalid_scope",
                           "The scope must be the one the mfa_token was issued for.")
    same = await finish(client, oauth, token, next_code(clock, enrolled.secret),
                        scope="openid")
    assert same.status_code == 200, same.text
    assert same.json()["scope"] == "openid"


async def test_mfa_token_takes_five_attempts(client: httpx.AsyncClient, factory: Factory,
                                            clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)
    right = next_code(clock, enrolled.secret)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(4):
        assert_answer(await finish(client, oauth, token, wrong), 400, WRONG_CODE)
    # The fifth attempt may be right.
    assert (await finish(client, oauth, token, right)).status_code == 200


async def test_mfa_token_dies_after_five_wrong_codes(client: httpx.AsyncClient,
                                                     factory: Factory, clock: TestClock,
                                                     services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)
    right = next_code(clock, enrolled.secret)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert_answer(await finish(client, oauth, token, wrong), 400, WRONG_CODE)
    assert_answer(await finish(client, oauth, token, right), 400, BAD_MFA_TOKEN)
    # The per-user throttle (5 a minute) is full now: a new mfa_token resets nothing.
    fresh = await mfa_token(client, oauth, user)
    throttled = await finish(client, oauth, fresh, right)
    assert_answer(throttled, 429, SLOW_DOWN)
    assert int(throttled.headers["retry-after"]) >= 1
    with_otp = await password_login(client, oauth, user, otp=right)
    assert_answer(with_otp, 429, SLOW_DOWN)


async def test_password_reset_does_not_remove_mfa(client: httpx.AsyncClient, factory: Factory,
                                                  clock: TestClock,
                                                  mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)

    code = await request_reset_code(client, mail_sink, user.email)
    new_password = "a brand new passphrase"
    reset = await client.post("/auth/reset-password", json={
        "email": user.email, "code": code, "new_password": new_password})
    assert reset.status_code == 200, reset.text
    user.password = new_password

    # A token from before the reset is dead (the password it proved is gone)...
    stale = await finish(client, oauth, token, next_code(clock, enrolled.secret))
    assert_answer(stale, 400, BAD_MFA_TOKEN)
    # ...and the new password alone still gets only mfa_required (ASVS 6.4.3).
    fresh = await mfa_token(client, oauth, user, scope="openid")
    done = await finish(client, oauth, fresh, next_code(clock, enrolled.secret))
    assert done.status_code == 200, done.text
    assert_tokens(done.json(), TOTP_AMR, int(clock.now().timestamp()))


async def test_password_reset_keeps_the_count_of_wrong_codes(
    client: httpx.AsyncClient, factory: Factory, clock: TestClock, mail_sink: SmtpSink,
) -> None:
    """Someone who controls the mailbox but not the authenticator: a reset gives no fresh
    window of second-factor guesses, however often it is repeated."""
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    right = next_code(clock, enrolled.secret)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    token = await mfa_token(client, oauth, user)
    for _ in range(5):  # the per-user throttle's first tier: 5 a minute
        assert_answer(await finish(client, oauth, token, wrong), 400, WRONG_CODE)

    code = await request_reset_code(client, mail_sink, user.email)
    user.password = "a brand new passphrase"
    reset = await client.post("/auth/reset-password", json={
        "email": user.email, "code": code, "new_password": user.password})
    assert reset.status_code == 200, reset.text

    fresh = await mfa_token(client, oauth, user)
    assert_answer(await finish(client, oauth, fresh, right), 429, SLOW_DOWN)
    assert_answer(await password_login(client, oauth, user, otp=right), 429, SLOW_DOWN)


async def test_public_client_finishes_with_mfa_otp(client: httpx.AsyncClient, factory: Factory,
                                                   clock: TestClock) -> None:
    user = await factory.user()
    oauth, public = await factory.client(), await factory.client(public=True)
    enrolled = await enrol(client, clock, oauth, user)
    response = await client.post(TOKEN, data={
        "grant_type": "password", "username": user.email, "password": user.password,
        "client_id": public.client_id})
    assert response.status_code == 403, response.text
    done = await finish(client, public, response.json()["mfa_token"],
                        next_code(clock, enrolled.secret))
    assert done.status_code == 200, done.text


async def test_mfa_otp_needs_the_password_grant(client: httpx.AsyncClient,
                                                factory: Factory) -> None:
    machine = await factory.client(grants=("client_credentials",), scopes="profile")
    response = await finish(client, machine, "x" * 43, "123456")
    assert_oauth_error(response, 400, "unauthorized_client",
                       "The client is not allowed to use this grant type.")


@pytest.mark.parametrize("missing", ["mfa_token", "otp"])
async def test_mfa_otp_requires_its_parameters(client: httpx.AsyncClient, factory: Factory,
                                               missing: str) -> None:
    oauth = await factory.client()
    data = {"grant_type": MFA_OTP, "mfa_token": "x" * 43, "otp": "123456"}
    del data[missing]
    response = await client.post(TOKEN, data=data, auth=oauth.auth)
    assert_oauth_error(response, 400, "invalid_request", f"The {missing} parameter is required.")


async def test_user_without_mfa_gets_pwd_amr(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    freeze_in_a_step(clock)
    response = await password_login(client, oauth, user, scope="openid")
    assert response.status_code == 200, response.text
    assert_tokens(response.json(), ["pwd"], int(clock.now().timestamp()))


async def test_discovery_lists_the_mfa_otp_grant(client: httpx.AsyncClient) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        document = (await client.get(path)).json()
        assert MFA_OTP in document["grant_types_supported"]


async def test_openapi_documents_otp_mfa_token_and_the_403(client: httpx.AsyncClient) -> None:
    """What Swagger UI's "Try it out" needs to finish an MFA sign-in."""
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/oauth/token"]["post"]
    form = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"otp", "mfa_token"} <= set(form["properties"])
    assert MFA_OTP in form["properties"]["grant_type"]["enum"]
    answer = operation["responses"]["403"]
    assert answer["description"].startswith("mfa_required")
    schema_name = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"error", "error_description", "mfa_token"} <= set(
        document["components"]["schemas"][schema_name]["properties"])
