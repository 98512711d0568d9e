"""Managing MFA: recovery codes regenerated, TOTP turned off (by code, or by password and
recovery code), the admin's reset (API and CLI), the emails, the audit trail, and the
per-user throttle on these endpoints."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from provider.audit.models import AuditEvent
from provider.mfa.models import RecoveryCode, TotpAuthenticator
from provider.services import Services
from tests.conftest import TestClock
from tests.factories import Factory, TestUser
from tests.helpers import assert_problem, bearer, login, password_login, refresh
from tests.mfa.helpers import (
    TOTP_AMR,
    WRONG_CODE,
    Enrolled,
    assert_answer,
    enrol,
    finish,
    mfa_token,
    next_code,
)
from tests.oauth.helpers import unverified
from tests.smtp_sink import SmtpSink, plain_text
from tests.test_cli import Cli

INVALID_CODE = "The code is wrong, expired or already used."
SUBJECT_ON = "Two-step verification was turned on for your provider account"
SUBJECT_OFF = "Two-step verification was turned off for your provider account"
SUBJECT_REGENERATED = "New recovery codes for your provider account"
SUBJECT_RESET = "Your provider two-step verification was reset by an administrator"
NOT_ENABLED = "Two-step verification is not on for this account."


def subjects(mail_sink: SmtpSink, address: str) -> list[str]:
    return [" ".join(str(message["Subject"]).split())
            for message in mail_sink.messages_to(address)]


async def events(services: Services, user: TestUser, prefix: str = "mfa.") -> list[AuditEvent]:
    await services.audit.flush()
    async with services.sessions() as session:
        rows = await session.scalars(
            select(AuditEvent).where(AuditEvent.subject_user_id == uuid.UUID(user.id))
            .order_by(AuditEvent.occurred_at, AuditEvent.id))
        return [row for row in rows if row.type.startswith(prefix)]


async def signed_in_with_totp(http: httpx.AsyncClient, clock: TestClock, oauth,
                              user: TestUser, enrolled: Enrolled) -> dict:
    response = await password_login(http, oauth, user, scope="openid account",
                                    otp=next_code(clock, enrolled.secret))
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


async def test_enable_is_emailed_and_audited(client: httpx.AsyncClient, factory: Factory,
                                             clock: TestClock, services: Services,
                                             mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    await enrol(client, clock, oauth, user)

    [message] = await mail_sink.wait_for(user.email)
    assert message["Subject"] == SUBJECT_ON
    assert "recovery codes" in plain_text(message)
    assert [(e.type, e.outcome, e.actor, e.client_id) for e in await events(services, user)] \
        == [("mfa.enabled", "success", user.id, oauth.client_id)]


async def test_enable_ends_the_other_sessions_and_keeps_the_callers(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    """ASVS 7.4.3: a new factor ends the other sessions, as a removed one does: a
    password-only session someone else holds does not outlive the second factor."""
    user, oauth = await factory.user(), await factory.client()
    elsewhere = await login(client, oauth, user, scope="openid account")
    enrolled = await enrol(client, clock, oauth, user)
    gone = await client.get("/users/me", headers=bearer(elsewhere["access_token"]))
    assert gone.status_code == 401
    assert (await refresh(client, oauth, elsewhere["refresh_token"])).status_code == 400
    mine = await client.get("/users/me", headers=bearer(enrolled.tokens["access_token"]))
    assert mine.status_code == 200 and mine.json()["mfa_enabled"] is True
    assert (await refresh(client, oauth, enrolled.tokens["refresh_token"])).status_code == 200


async def test_regenerate_recovery_codes_kills_the_old_set(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock, services: Services,
        mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    headers = bearer(enrolled.tokens["access_token"])

    # Needs a current TOTP code: a recovery code does not make new ones.
    refused = await client.post("/users/me/mfa/recovery-codes", headers=headers,
                                json={"code": enrolled.recovery_codes[0]})
    assert_problem(refused, 400, "invalid_code", INVALID_CODE)
    response = await client.post("/users/me/mfa/recovery-codes", headers=headers,
                                 json={"code": next_code(clock, enrolled.secret)})
    assert response.status_code == 200, response.text
    fresh = response.json()["recovery_codes"]
    assert len(fresh) == 10 and not set(fresh) & set(enrolled.recovery_codes)

    old = await password_login(client, oauth, user, otp=enrolled.recovery_codes[1])
    assert_answer(old, 400, WRONG_CODE)
    new = await password_login(client, oauth, user, otp=fresh[0])
    assert new.status_code == 200, new.text
    await mail_sink.wait_for(user.email, count=3)
    assert subjects(mail_sink, user.email) == [
        SUBJECT_ON, SUBJECT_REGENERATED,
        "A recovery code was used to sign in to your provider account"]
    assert sorted(e.type for e in await events(services, user)) == [
        "mfa.enabled", "mfa.recovery_codes_regenerated"]


async def test_disable_with_totp_ends_other_sessions_only(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock, services: Services,
        mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    mine = await signed_in_with_totp(client, clock, oauth, user, enrolled)
    other = await signed_in_with_totp(client, clock, oauth, user, enrolled)

    response = await client.request("DELETE", "/users/me/mfa/totp",
                                     headers=bearer(mine["access_token"]),
                                     json={"code": next_code(clock, enrolled.secret)})
    assert response.status_code == 204, response.text

    me = await client.get("/users/me", headers=bearer(mine["access_token"]))
    assert me.status_code == 200 and me.json()["mfa_enabled"] is False
    for gone in (other, enrolled.tokens):
        answer = await client.get("/users/me", headers=bearer(gone["access_token"]))
        assert answer.status_code == 401
    # The password alone signs in again, with amr ["pwd"].
    body = await login(client, oauth, user, scope="openid")
    assert unverified(body["access_token"])[1]["amr"] == ["pwd"]
    async with services.engine.connect() as conn:
        for table in (TotpAuthenticator, RecoveryCode):
            rows = (await conn.execute(select(table).where(
                table.user_id == uuid.UUID(user.id)))).all()
            assert rows == []
    await mail_sink.wait_for(user.email, count=2)
    assert subjects(mail_sink, user.email) == [SUBJECT_ON, SUBJECT_OFF]
    [disabled] = [e for e in await events(services, user) if e.type == "mfa.disabled"]
    assert (disabled.type, disabled.details) == ("mfa.disabled", {"method": "totp"})


async def test_disable_with_password_and_recovery_code(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock,
        services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    headers = bearer(enrolled.tokens["access_token"])

    wrong_password = await client.request("DELETE", "/users/me/mfa/totp", headers=headers, json={
        "password": "not my password", "recovery_code": enrolled.recovery_codes[0]})
    assert_problem(wrong_password, 400, "invalid_password",
                   "The current password is not correct.")
    wrong_code = await client.request("DELETE", "/users/me/mfa/totp", headers=headers, json={
        "password": user.password, "recovery_code": "0000-0000-0000-0000"})
    assert_problem(wrong_code, 400, "invalid_code", INVALID_CODE)
    # A TOTP code is not a recovery code, nor the other way round.
    totp_as_recovery = await client.request("DELETE", "/users/me/mfa/totp", headers=headers,
                                            json={"password": user.password,
                                                  "recovery_code": next_code(clock,
                                                                             enrolled.secret)})
    assert_problem(totp_as_recovery, 400, "invalid_code", INVALID_CODE)
    recovery_as_totp = await client.request("DELETE", "/users/me/mfa/totp", headers=headers,
                                            json={"code": enrolled.recovery_codes[0]})
    assert_problem(recovery_as_totp, 400, "invalid_code", INVALID_CODE)

    done = await client.request("DELETE", "/users/me/mfa/totp", headers=headers, json={
        "password": user.password, "recovery_code": enrolled.recovery_codes[0]})
    assert done.status_code == 204, done.text
    again = await client.request("DELETE", "/users/me/mfa/totp", headers=headers, json={
        "code": "123456"})
    assert_problem(again, 409, "mfa_not_enabled", NOT_ENABLED)
    [disabled] = [e for e in await events(services, user) if e.type == "mfa.disabled"]
    assert (disabled.type, disabled.details) == ("mfa.disabled", {"method": "recovery_code"})


async def test_disable_body_takes_one_proof(client: httpx.AsyncClient, factory: Factory,
                                            clock: TestClock) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    headers = bearer(enrolled.tokens["access_token"])
    for body in ({}, {"password": user.password}, {"recovery_code": "x"},
                 {"code": "123456", "password": user.password, "recovery_code": "x"},
                 {"code": "123456", "secret": "x"}):
        response = await client.request("DELETE", "/users/me/mfa/totp", headers=headers,
                                        json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["code"] == "validation_error"


async def test_regenerate_without_mfa_is_409(client: httpx.AsyncClient,
                                             factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    tokens = await login(client, oauth, user)
    response = await client.post("/users/me/mfa/recovery-codes",
                                 headers=bearer(tokens["access_token"]), json={"code": "123456"})
    assert_problem(response, 409, "mfa_not_enabled", NOT_ENABLED)


async def test_wrong_codes_on_account_endpoints_are_throttled_per_user(
        client: httpx.AsyncClient, factory: Factory, clock: TestClock) -> None:
    """A stolen access token is no TOTP-guessing oracle: the same per-user throttle as
    sign-in (5 a minute by default), shared with the token endpoint."""
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    headers = bearer(enrolled.tokens["access_token"])
    right = next_code(clock, enrolled.secret)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(5):
        response = await client.post("/users/me/mfa/recovery-codes", headers=headers,
                                     json={"code": wrong})
        assert_problem(response, 400, "invalid_code", INVALID_CODE)
    throttled = await client.post("/users/me/mfa/recovery-codes", headers=headers,
                                  json={"code": right})
    assert_problem(throttled, 429, "rate_limited", "Too many requests. Try again later.")
    assert int(throttled.headers["retry-after"]) >= 1
    at_login = await finish(client, oauth, await mfa_token(client, oauth, user), right)
    assert at_login.status_code == 429


async def admin_token(client: httpx.AsyncClient, factory: Factory) -> str:
    admin, oauth = await factory.user(is_admin=True), await factory.client()
    return str((await login(client, oauth, admin, scope="admin"))["access_token"])


async def test_admin_resets_mfa(client: httpx.AsyncClient, factory: Factory, clock: TestClock,
                                services: Services, mail_sink: SmtpSink) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    session = await signed_in_with_totp(client, clock, oauth, user, enrolled)
    admin = await admin_token(client, factory)

    shown = await client.get(f"/admin/users/{user.id}", headers=bearer(admin))
    assert shown.json()["mfa_enabled"] is True
    response = await client.delete(f"/admin/users/{user.id}/mfa", headers=bearer(admin))
    assert response.status_code == 204, response.text
    shown = await client.get(f"/admin/users/{user.id}", headers=bearer(admin))
    assert shown.json()["mfa_enabled"] is False

    # Every session of the user ended; the password alone signs in now.
    gone = await client.get("/users/me", headers=bearer(session["access_token"]))
    assert gone.status_code == 401
    body = await login(client, oauth, user, scope="openid")
    assert unverified(body["id_token"])[1]["amr"] == ["pwd"]
    await mail_sink.wait_for(user.email, count=2)
    assert subjects(mail_sink, user.email) == [SUBJECT_ON, SUBJECT_RESET]
    [reset] = [e for e in await events(services, user) if e.type == "mfa.reset"]
    admin_id = unverified(admin)[1]["sub"]
    assert (reset.type, reset.actor, reset.details) == ("mfa.reset", admin_id,
                                                        {"mfa_enabled": True})

    # Idempotent: nothing left to remove, nothing mailed.
    again = await client.delete(f"/admin/users/{user.id}/mfa", headers=bearer(admin))
    assert again.status_code == 204
    assert len(mail_sink.messages_to(user.email)) == 2


async def test_admin_reset_needs_an_admin_and_a_user(client: httpx.AsyncClient,
                                                     factory: Factory) -> None:
    user, oauth = await factory.user(), await factory.client()
    plain = (await login(client, oauth, user))["access_token"]
    refused = await client.delete(f"/admin/users/{user.id}/mfa", headers=bearer(plain))
    assert refused.status_code == 403
    admin = await admin_token(client, factory)
    for missing in (uuid.uuid4(), "not-a-uuid"):
        response = await client.delete(f"/admin/users/{missing}/mfa", headers=bearer(admin))
        assert_problem(response, 404, "user_not_found", "No such user.")


async def test_cli_mfa_reset(client: httpx.AsyncClient, factory: Factory, clock: TestClock,
                             services: Services, mail_sink: SmtpSink, tmp_path) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    cli = Cli(tmp_path, services.settings.database_url, services.settings.keys_dir)

    result = cli("users", "mfa-reset", user.email.upper(), "--json",
                 PROVIDER_SMTP_URL=mail_sink.url)
    assert result.json() == {"id": user.id, "email": user.email, "mfa_was_enabled": True}
    gone = await client.get("/users/me", headers=bearer(enrolled.tokens["access_token"]))
    assert gone.status_code == 401
    await mail_sink.wait_for(user.email, count=2)
    assert subjects(mail_sink, user.email) == [SUBJECT_ON, SUBJECT_RESET]
    [reset] = [e for e in await events(services, user) if e.type == "mfa.reset"]
    assert (reset.type, reset.actor) == ("mfa.reset", "cli")

    again = cli("users", "mfa-reset", user.email).ok()
    assert again.stdout.strip() == f"{user.email} had no two-step verification; nothing changed"
    unknown = cli("users", "mfa-reset", "nobody-at-all@example.com").usage_error()
    assert unknown == "error: no user with the email address nobody-at-all@example.com"


async def test_cli_mfa_reset_without_a_working_mail_setup(
    client: httpx.AsyncClient, factory: Factory, clock: TestClock, services: Services,
    tmp_path,
) -> None:
    """A mail setup that cannot work (a malformed URL, refused with the settings; no SMTP
    in production, refused by the mailer) refuses the reset with nothing written (after
    the commit the notice would be lost for good); a mail that fails once the reset is
    committed only earns a warning beside the usual answer."""
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    cli = Cli(tmp_path, services.settings.database_url, services.settings.keys_dir)

    malformed = cli("users", "mfa-reset", user.email, "--json", PROVIDER_SMTP_URL="smtp:/oops")
    assert malformed.usage_error() == (
        "error: invalid configuration (smtp_url): Value error, PROVIDER_SMTP_URL has no "
        "host; use smtp://[user:pass@]host:port, smtp+starttls://... or smtps://...")
    production = cli("users", "mfa-reset", user.email, "--json", PROVIDER_ENV="production",
                     PROVIDER_ISSUER="https://id.example.com", PROVIDER_METRICS_PUBLIC="true",
                     PROVIDER_ARGON2_MEMORY_COST="19456", PROVIDER_ARGON2_TIME_COST="2")
    assert production.usage_error() == (
        "error: cannot email the user, nothing changed: PROVIDER_SMTP_URL must be set when "
        "PROVIDER_ENV=production")
    me = await client.get("/users/me", headers=bearer(enrolled.tokens["access_token"]))
    assert me.status_code == 200 and me.json()["mfa_enabled"] is True
    assert [e.type for e in await events(services, user)] == ["mfa.enabled"]

    unreachable = cli("users", "mfa-reset", user.email, "--json",
                      PROVIDER_SMTP_URL="smtp://127.0.0.1:1")
    assert unreachable.json() == {"id": user.id, "email": user.email, "mfa_was_enabled": True}
    assert unreachable.stderr.startswith(
        "warning: the user could not be emailed: sending mail via 127.0.0.1:1 failed: ")
    gone = await client.get("/users/me", headers=bearer(enrolled.tokens["access_token"]))
    assert gone.status_code == 401


async def test_deleting_the_account_removes_mfa(client: httpx.AsyncClient, factory: Factory,
                                                clock: TestClock, services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    response = await client.request("DELETE", "/users/me",
                                    headers=bearer(enrolled.tokens["access_token"]),
                                    json={"password": user.password})
    assert response.status_code == 204, response.text
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(TotpAuthenticator).where(
            TotpAuthenticator.user_id == uuid.UUID(user.id)))).all()
    assert rows == []


async def test_sign_in_events_name_the_factor(client: httpx.AsyncClient, factory: Factory,
                                              clock: TestClock, services: Services) -> None:
    user, oauth = await factory.user(), await factory.client()
    enrolled = await enrol(client, clock, oauth, user)
    token = await mfa_token(client, oauth, user)
    right = next_code(clock, enrolled.secret)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    assert_answer(await finish(client, oauth, token, wrong), 400, WRONG_CODE)
    ok = await finish(client, oauth, token, enrolled.recovery_codes[0])
    assert ok.status_code == 200
    assert unverified(ok.json()["access_token"])[1]["amr"] != TOTP_AMR
    logins = [(e.type, e.outcome, e.details) for e in await events(services, user, "")
              if e.type in ("login", "mfa.required") and e.client_id == oauth.client_id]
    # (The clock is frozen: events share instants, so their order is not asserted.)
    assert sorted(logins, key=repr) == sorted([
        ("login", "success", {"method": "password"}),  # the enrolment's sign-in
        ("mfa.required", "success", {}),
        ("login", "failure", {"method": "password", "reason": "wrong_otp"}),
        ("login", "success", {"method": "password", "mfa": "recovery_code"}),
    ], key=repr)
