"""MFA test helpers: TOTP codes from pyotp at a chosen instant, enrolment through the API
and straight through the service (for e2e data), and the answers the suites assert."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
from sqlalchemy import update

from provider.mfa.models import TotpAuthenticator
from provider.oauth.grants.mfa_otp import MFA_OTP
from provider.services import Services
from tests.conftest import TestClock
from tests.factories import TestClient, TestUser
from tests.helpers import TOKEN, assert_oauth_error, bearer, login

STEP = timedelta(seconds=30)
MFA_REQUIRED_DESCRIPTION = "Multi-factor authentication is required: send a one-time code."
WRONG_CODE = {"error": "invalid_grant",
              "error_description": "The one-time code is wrong or was already used."}
BAD_MFA_TOKEN = {"error": "invalid_grant",
                 "error_description": "The mfa_token is invalid, expired, already used, out "
                                      "of attempts, or was issued to another client."}
SLOW_DOWN = {"error": "slow_down", "error_description": "Too many attempts. Try again later."}
TOTP_AMR = ["pwd", "otp", "mfa"]
RECOVERY_AMR = ["pwd", "mfa"]

__all__ = ["MFA_OTP"]


def code_at(secret: str, instant: datetime) -> str:
    """What an authenticator app shows at ``instant`` (RFC 6238 defaults)."""
    return pyotp.TOTP(secret).at(instant)


def freeze_in_a_step(clock: TestClock, seconds_into_step: int = 5) -> datetime:
    """Stop the test clock ``seconds_into_step`` into the previous 30 s step (always in
    the past, so that what the CLI or another process does with the real time comes
    later)."""
    now = int(time.time())
    at = datetime.fromtimestamp(now - now % 30 - 30 + seconds_into_step, UTC)
    clock.freeze(at)
    return at


@dataclass
class Enrolled:
    secret: str
    recovery_codes: list[str]
    tokens: dict[str, Any]
    """The password-only sign-in that enrolled (its session survives the enrolment)."""


async def enrol(http: httpx.AsyncClient, clock: TestClock, oauth: TestClient,
                user: TestUser) -> Enrolled:
    """Turn TOTP on through the API with the clock frozen in a step; confirm with that
    step's code (so the next code to use is the next step's: ``next_code``)."""
    if clock.frozen_at is None:
        freeze_in_a_step(clock)
    tokens = await login(http, oauth, user, scope="openid profile email account")
    headers = bearer(tokens["access_token"])
    started = await http.post("/users/me/mfa/totp", headers=headers)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    confirmed = await http.post("/users/me/mfa/totp/confirm", headers=headers,
                                json={"code": code_at(secret, clock.now())})
    assert confirmed.status_code == 200, confirmed.text
    return Enrolled(secret, confirmed.json()["recovery_codes"], tokens)


def next_code(clock: TestClock, secret: str) -> str:
    """Move the frozen clock one step on and read the app: a code never used before."""
    clock.advance(STEP)
    return code_at(secret, clock.now())


async def enable_totp(services: Services, user: TestUser) -> tuple[str, list[str]]:
    """TOTP on for ``user`` straight through the service, as if confirmed long ago: no
    step used yet, so any current code works once (e2e data against the system clock)."""
    user_id = uuid.UUID(user.id)
    now = services.clock.now()
    async with services.engine.begin() as conn:
        enrolment = await services.mfa.start_enrolment(conn, user_id=user_id,
                                                       email=user.email, now=now)
        codes = await services.mfa.confirm(conn, user_id=user_id,
                                           code=code_at(enrolment.secret, now), now=now)
        await conn.execute(update(TotpAuthenticator)
                           .where(TotpAuthenticator.user_id == user_id)
                           .values(last_used_step=0))
    return enrolment.secret, codes


async def mfa_token(http: httpx.AsyncClient, oauth: TestClient, user: TestUser,
                    **form: str) -> str:
    """The password step of a user with TOTP: the mfa_token of its 403."""
    response = await http.post(TOKEN, auth=oauth.auth, data={
        "grant_type": "password", "username": user.email, "password": user.password, **form})
    assert response.status_code == 403, response.text
    body = response.json()
    assert set(body) == {"error", "error_description", "mfa_token"}, body
    assert body["error"] == "mfa_required"
    token: str = body["mfa_token"]
    return token


async def finish(http: httpx.AsyncClient, oauth: TestClient, token: str, otp: str,
                 **form: str) -> httpx.Response:
    """The mfa-otp grant, whatever its answer."""
    data = {"grant_type": MFA_OTP, "mfa_token": token, "otp": otp, **form}
    if oauth.client_secret is None:
        return await http.post(TOKEN, data={**data, "client_id": oauth.client_id})
    return await http.post(TOKEN, data=data, auth=oauth.auth)


def assert_answer(response: httpx.Response, status: int, body: dict[str, str]) -> None:
    """The whole OAuth error answer whose body is ``body``."""
    assert_oauth_error(response, status, body["error"], body["error_description"])
