"""MFA through real `provider serve` processes.

- The whole flow with Authlib's OAuth2Client: password grant, mfa_required caught,
  finished with a recovery code (mfa-otp grant) and with `otp` in the password grant;
  tokens verified with PyJWT from the served JWKS; refresh keeps amr and auth_time.
- Races, split between two servers on one database, many trials, PostgreSQL and SQLite:
  two parallel submissions of one recovery code, of one TOTP code, or of one mfa_token:
  exactly one wins.
- The caps under concurrency (two workers sharing Redis): 20 parallel wrong codes on one
  mfa_token are 5 wrong codes and 15 refusals; 20 parallel wrong codes over four tokens
  are 5 wrong codes and 15 429s, exactly as 20 sequential ones; a new mfa_token resets
  neither. 30 parallel wrong codes with PROVIDER_MFA_LOCKOUT_FAILURES=7 are 7 wrong codes
  and 23 refusals, one lock notice, and then no code is taken.

TOTP codes come from pyotp and the real clock: a code is accepted in its own step and
the next, so a code computed just before a step boundary still works; the flow waits for
the next step where it must use a second TOTP code.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyotp
import pytest
import pytest_asyncio
from authlib.deprecate import AuthlibDeprecationWarning
from sqlalchemy import func, select

from provider.mfa.models import MfaToken, RecoveryCode
from provider.services import build_services
from tests.conftest import make_settings
from tests.e2e.conftest import LiveServer, OAuthClient, ServerPair, User
from tests.factories import Factory
from tests.mfa.helpers import (
    BAD_MFA_TOKEN,
    MFA_OTP,
    RECOVERY_AMR,
    SLOW_DOWN,
    TOTP_AMR,
    WRONG_CODE,
    enable_totp,
)
from tests.smtp_sink import SmtpSink

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="The httpx module is deprecated",
                            category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

REDIS_URL = os.environ.get("PROVIDER_TEST_REDIS_URL")
REQUIRE_REDIS = os.environ.get("PROVIDER_TEST_REQUIRE_POSTGRES") == "1"
RACE_TRIALS = 15
BURST = 20


def current_step() -> int:
    return int(time.time()) // 30


async def wait_for_step_after(step: int) -> None:
    """Sleep until the real clock is in a later 30 s step than ``step`` (≤ 30 s)."""
    while current_step() <= step:
        await asyncio.sleep(0.2)


def wrong_codes(secret: str, count: int) -> list[str]:
    """Codes that are right for no step near now."""
    totp = pyotp.TOTP(secret)
    now = time.time()
    near = {totp.at(now + delta) for delta in (-60, -30, 0, 30, 60)}
    codes: list[str] = []
    while len(codes) < count:
        code = f"{secrets.randbelow(1_000_000):06d}"
        if code not in near:
            codes.append(code)
    return codes


def body_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body


# --- the whole flow with Authlib -------------------------------------------------------------


def verify(jwks: jwt.PyJWKClient, token: str, *, audience: str, issuer: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, jwks.get_signing_key_from_jwt(token), algorithms=["RS256"],
        audience=audience, issuer=issuer, options={"require": ["amr", "auth_time"]})
    return claims


async def test_authlib_client_signs_in_with_a_second_factor(live: LiveServer) -> None:
    user, client = live.create_account()
    async with live.http() as http:
        meta = (await http.get("/.well-known/openid-configuration")).json()
    assert MFA_OTP in meta["grant_types_supported"]
    token_endpoint, issuer = meta["token_endpoint"], meta["issuer"]
    jwks = jwt.PyJWKClient(meta["jwks_uri"])
    mfa: dict[str, Any] = {}

    def keep_mfa_token(response: httpx.Response) -> httpx.Response:
        # Authlib raises OAuthError(error, description) for an error answer; the hook
        # sees the answer first and keeps the mfa_token of a 403 mfa_required.
        if response.status_code == 403:
            mfa.update(response.json())
        return response

    def authlib_client() -> AsyncOAuth2Client:
        oauth = AsyncOAuth2Client(client_id=client.client_id,
                                  client_secret=client.client_secret,
                                  scope="openid profile account", trust_env=False, timeout=30.0)
        oauth.register_compliance_hook("access_token_response", keep_mfa_token)
        return oauth

    # Enrolment with a password-only session.
    async with authlib_client() as oauth:
        first = await oauth.fetch_token(token_endpoint, grant_type="password",
                                        username=user.email, password=user.password)
        assert verify(jwks, first["id_token"], audience=client.client_id,
                      issuer=issuer)["amr"] == ["pwd"]
        started = await oauth.post(f"{issuer}/users/me/mfa/totp")
        assert started.status_code == 200, started.text
        app = pyotp.parse_uri(started.json()["otpauth_uri"])
        enrolled_in = current_step()
        confirmed = await oauth.post(f"{issuer}/users/me/mfa/totp/confirm",
                                     json={"code": app.now()})
        assert confirmed.status_code == 200, confirmed.text
        recovery_codes = confirmed.json()["recovery_codes"]

    # The password alone: mfa_required, finished with a recovery code (mfa-otp grant).
    async with authlib_client() as oauth:
        with pytest.raises(OAuthError) as required:
            await oauth.fetch_token(token_endpoint, grant_type="password",
                                    username=user.email, password=user.password)
        assert required.value.error == "mfa_required"
        token = await oauth.fetch_token(token_endpoint, grant_type=MFA_OTP,
                                        mfa_token=mfa["mfa_token"], otp=recovery_codes[0])
        access = verify(jwks, token["access_token"], audience=issuer, issuer=issuer)
        id_claims = verify(jwks, token["id_token"], audience=client.client_id, issuer=issuer)
        assert access["amr"] == id_claims["amr"] == RECOVERY_AMR
        assert access["auth_time"] == id_claims["auth_time"]
        assert access["scope"] == "openid profile account"
        me = await oauth.get(f"{issuer}/users/me")
        assert me.status_code == 200 and me.json()["mfa_enabled"] is True
        refreshed = await oauth.refresh_token(token_endpoint,
                                              refresh_token=token["refresh_token"])
        for name, audience in (("access_token", issuer), ("id_token", client.client_id)):
            claims = verify(jwks, refreshed[name], audience=audience, issuer=issuer)
            assert (claims["amr"], claims["auth_time"]) == (RECOVERY_AMR,
                                                            access["auth_time"])
        # The recovery code is spent.
        with pytest.raises(OAuthError) as spent:
            await oauth.fetch_token(token_endpoint, grant_type="password",
                                    username=user.email, password=user.password,
                                    otp=recovery_codes[0])
        assert (spent.value.error, spent.value.description) == (
            "invalid_grant", WRONG_CODE["error_description"])

    # The password grant with `otp`: a TOTP code of a step after the enrolment's.
    await wait_for_step_after(enrolled_in)
    async with authlib_client() as oauth:
        token = await oauth.fetch_token(token_endpoint, grant_type="password",
                                        username=user.email, password=user.password,
                                        otp=app.now())
        for name, audience in (("access_token", issuer), ("id_token", client.client_id)):
            claims = verify(jwks, token[name], audience=audience, issuer=issuer)
            assert claims["amr"] == TOTP_AMR
            assert abs(claims["auth_time"] - time.time()) < 120


# --- races between two servers -------------------------------------------------------------


async def _at_once(*calls: Any) -> list[httpx.Response]:
    """Start every call, then release them together."""
    start = asyncio.Event()

    async def gated(call: Any) -> httpx.Response:
        await start.wait()
        response: httpx.Response = await call()
        return response

    tasks = [asyncio.create_task(gated(call)) for call in calls]
    await asyncio.sleep(0.05)
    start.set()
    return list(await asyncio.gather(*tasks))


async def _mfa_token(server: LiveServer, oauth: OAuthClient, user: User) -> str:
    async with server.http() as http:
        response = await http.post("/oauth/token", auth=(oauth.client_id, oauth.client_secret),
                                   data={"grant_type": "password", "username": user.email,
                                         "password": user.password, "scope": "openid account"})
    assert response.status_code == 403, response.text
    token: str = response.json()["mfa_token"]
    return token


def _finish(server: LiveServer, oauth: OAuthClient, token: str, otp: str) -> Any:
    async def call() -> httpx.Response:
        async with server.http() as http:
            return await http.post("/oauth/token",
                                   auth=(oauth.client_id, oauth.client_secret),
                                   data={"grant_type": MFA_OTP, "mfa_token": token, "otp": otp})
    return call


def _outcome(response: httpx.Response) -> str:
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        return "signed in"
    body = body_of(response)
    assert body in (WRONG_CODE, BAD_MFA_TOKEN), body
    return "wrong code" if body == WRONG_CODE else "token gone"


async def test_parallel_submissions_of_one_recovery_code_one_wins(
        pair: ServerPair, pair_factory: Factory) -> None:
    oauth = await pair_factory.client()
    for _ in range(RACE_TRIALS):
        user = await pair_factory.user()
        _, codes = await enable_totp(pair_factory.services, user)
        tokens = [await _mfa_token(pair[i], oauth, user) for i in (0, 1)]
        answers = await _at_once(*(_finish(pair[i], oauth, tokens[i], codes[0])
                                   for i in (0, 1)))
        assert sorted(map(_outcome, answers)) == ["signed in", "wrong code"]
        async with pair_factory.services.engine.connect() as conn:
            used = (await conn.execute(select(func.count()).select_from(RecoveryCode).where(
                RecoveryCode.user_id == uuid.UUID(user.id),
                RecoveryCode.used_at.is_not(None)))).scalar_one()
        assert used == 1


async def test_parallel_submissions_of_one_totp_code_one_wins(
        pair: ServerPair, pair_factory: Factory) -> None:
    oauth = await pair_factory.client()
    for _ in range(RACE_TRIALS):
        user = await pair_factory.user()
        secret, _ = await enable_totp(pair_factory.services, user)
        tokens = [await _mfa_token(pair[i], oauth, user) for i in (0, 1)]
        code = pyotp.TOTP(secret).now()
        answers = await _at_once(*(_finish(pair[i], oauth, tokens[i], code) for i in (0, 1)))
        assert sorted(map(_outcome, answers)) == ["signed in", "wrong code"]


async def test_parallel_finishes_of_one_mfa_token_one_wins(
        pair: ServerPair, pair_factory: Factory) -> None:
    """Two different right recovery codes on one token: one signs in, the other finds the
    token used, and its recovery code is not spent (its transaction rolled back)."""
    oauth = await pair_factory.client()
    for _ in range(RACE_TRIALS):
        user = await pair_factory.user()
        _, codes = await enable_totp(pair_factory.services, user)
        token = await _mfa_token(pair[0], oauth, user)
        answers = await _at_once(*(_finish(pair[i], oauth, token, codes[i]) for i in (0, 1)))
        assert sorted(map(_outcome, answers)) == ["signed in", "token gone"]
        loser = codes[[a.status_code for a in answers].index(400)]
        again = await _finish(pair[1], oauth, await _mfa_token(pair[1], oauth, user), loser)()
        assert again.status_code == 200, again.text


# --- the caps under concurrency --------------------------------------------------------------


def _require_redis() -> str:
    if not REDIS_URL:
        if REQUIRE_REDIS:
            pytest.fail("PROVIDER_TEST_REDIS_URL is required in CI")
        pytest.skip("no PROVIDER_TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture(scope="module")
def caps_database(request: pytest.FixtureRequest, postgres_server: str | None) -> str:
    if postgres_server is not None:
        return str(request.getfixturevalue("migrated"))
    return str(request.getfixturevalue("sqlite_e2e_url"))


@pytest.fixture(scope="module")
def caps_server(caps_database: str, keys_dir: Path, e2e_dir: Path) -> Iterator[LiveServer]:
    """Two workers sharing one Redis: the per-user throttle holds across processes. Few
    database connections each: a burst queues for them rather than open 40 (the shared
    test PostgreSQL may have few to spare)."""
    redis_url = _require_redis()
    with LiveServer(database_url=caps_database, keys_dir=keys_dir,
                    rundir=e2e_dir / f"mfa-caps-{secrets.token_hex(3)}", workers=2,
                    extra_env={"PROVIDER_REDIS_URL": redis_url,
                               "PROVIDER_DB_POOL_SIZE": "3"}) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def caps_factory(caps_server: LiveServer, keys_dir: Path) -> AsyncIterator[Factory]:
    services = build_services(make_settings(caps_server.database_url, keys_dir))
    try:
        yield Factory(services)
    finally:
        await services.engine.dispose()


def _counted(responses: list[httpx.Response]) -> Counter[str]:
    counted: Counter[str] = Counter()
    for response in responses:
        body = body_of(response)
        if response.status_code == 429:
            assert body == SLOW_DOWN
            assert int(response.headers["retry-after"]) >= 1
            counted["throttled"] += 1
        else:
            counted[_outcome(response)] += 1
    return counted


async def test_twenty_parallel_wrong_codes_on_one_mfa_token(
        caps_server: LiveServer, caps_factory: Factory) -> None:
    oauth, user = await caps_factory.client(), await caps_factory.user()
    secret, _ = await enable_totp(caps_factory.services, user)
    token = await _mfa_token(caps_server, oauth, user)

    answers = await _at_once(*(_finish(caps_server, oauth, token, code)
                               for code in wrong_codes(secret, BURST)))
    assert _counted(answers) == Counter({"wrong code": 5, "token gone": BURST - 5})
    # Out of attempts: the right code does not help any more...
    right = pyotp.TOTP(secret).now()
    late = await _finish(caps_server, oauth, token, right)()
    assert body_of(late) == BAD_MFA_TOKEN
    # ...and a new token resets nothing: the user's 5 wrong codes a minute are used up.
    fresh = await _finish(caps_server, oauth, await _mfa_token(caps_server, oauth, user),
                          right)()
    assert fresh.status_code == 429 and body_of(fresh) == SLOW_DOWN


async def test_twenty_wrong_codes_over_four_tokens_parallel_like_sequential(
        caps_server: LiveServer, caps_factory: Factory) -> None:
    oauth = await caps_factory.client()
    outcomes = []
    for parallel in (True, False):
        user = await caps_factory.user()
        secret, _ = await enable_totp(caps_factory.services, user)
        tokens = [await _mfa_token(caps_server, oauth, user) for _ in range(4)]
        calls = [_finish(caps_server, oauth, tokens[i % 4], code)
                 for i, code in enumerate(wrong_codes(secret, BURST))]
        if parallel:
            answers = await _at_once(*calls)
        else:
            answers = [await call() for call in calls]
        outcomes.append(_counted(answers))
        # Throttled submissions were never checked: their token attempts were given back.
        async with caps_factory.services.engine.connect() as conn:
            attempts = (await conn.execute(select(func.sum(MfaToken.attempts)).where(
                MfaToken.user_id == uuid.UUID(user.id)))).scalar_one()
        assert attempts == 5
        right = pyotp.TOTP(secret).now()
        fresh = await _finish(caps_server, oauth, await _mfa_token(caps_server, oauth, user),
                              right)()
        assert fresh.status_code == 429, fresh.text
    assert outcomes == [Counter({"wrong code": 5, "throttled": BURST - 5})] * 2


# --- wrong codes in a row lock the second factor, across processes -----------------------

LOCKOUT = 7


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def lockout_database(request: pytest.FixtureRequest, postgres_server: str | None) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_e2e_url"))
    if postgres_server is None:
        pytest.skip("no PostgreSQL")
    return str(request.getfixturevalue("migrated"))


@pytest.fixture(scope="module")
def lockout_server(lockout_database: str, keys_dir: Path, e2e_dir: Path,
                   mail_sink: SmtpSink) -> Iterator[LiveServer]:
    """Two workers, PROVIDER_MFA_LOCKOUT_FAILURES=7 and a per-user throttle too wide to
    interfere: only the count of wrong codes in a row (in the database) limits them."""
    redis_url = _require_redis()
    with LiveServer(database_url=lockout_database, keys_dir=keys_dir,
                    rundir=e2e_dir / f"mfa-lockout-{secrets.token_hex(3)}", workers=2,
                    extra_env={"PROVIDER_REDIS_URL": redis_url,
                               "PROVIDER_DB_POOL_SIZE": "3",
                               "PROVIDER_SMTP_URL": mail_sink.url,
                               "PROVIDER_MFA_LOCKOUT_FAILURES": str(LOCKOUT),
                               "PROVIDER_MFA_THROTTLE_ACCOUNT": "1000 per minute"}) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def lockout_factory(lockout_server: LiveServer, keys_dir: Path
                          ) -> AsyncIterator[Factory]:
    services = build_services(make_settings(lockout_server.database_url, keys_dir))
    try:
        yield Factory(services)
    finally:
        await services.engine.dispose()


async def test_parallel_wrong_codes_over_two_workers_lock_after_exactly_the_limit(
        lockout_server: LiveServer, lockout_factory: Factory, mail_sink: SmtpSink) -> None:
    oauth, user = await lockout_factory.client(), await lockout_factory.user()
    secret, recovery_codes = await enable_totp(lockout_factory.services, user)
    tokens = [await _mfa_token(lockout_server, oauth, user) for _ in range(6)]
    answers = await _at_once(*(_finish(lockout_server, oauth, tokens[i % 6], code)
                               for i, code in enumerate(wrong_codes(secret, 30))))
    locked = {"error": "invalid_grant",
              "error_description": "Two-step verification is locked after too many wrong "
                                   "codes in a row; an administrator must reset it."}
    counted = Counter("wrong code" if body_of(a) == WRONG_CODE else
                      "locked" if body_of(a) == locked else a.text for a in answers)
    assert counted == Counter({"wrong code": LOCKOUT, "locked": 30 - LOCKOUT})
    # The right code and a recovery code are refused too, and the owner was told once.
    for otp in (pyotp.TOTP(secret).now(), recovery_codes[0]):
        late = await _finish(lockout_server, oauth,
                             await _mfa_token(lockout_server, oauth, user), otp)()
        assert body_of(late) == locked
    subject = f"Your provider sign-in is locked after {LOCKOUT} wrong codes"
    deadline = time.monotonic() + 10
    while not [m for m in mail_sink.messages_to(user.email) if m["Subject"] == subject]:
        assert time.monotonic() < deadline, "no lock notice"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert [m["Subject"] for m in mail_sink.messages_to(user.email)] == [subject]
