"""Throttles that hold under concurrency, against real `provider serve` processes.

- 50 parallel wrong passwords for one account, and 50 parallel wrong secrets for one
  client, are answered exactly like 50 sequential ones;
- a client attacked from one address keeps working from another (X-Forwarded-For from
  a trusted CIDR range, 127.0.0.0/8);
- every per-address limit counts an IPv6 client by its /64;
- the owner of an address resets the password after strangers sent wrong codes;
- two servers sharing one real Redis share their limits;
- a throwaway Redis stopped under a running server gives 503s, and service resumes when
  it is back;
- `serve --workers 2` without Redis warns that every limit is per process;
- 50 parallel wrong passwords on the login page count like the password grant's.

Each test uses accounts, clients and client addresses of its own (unique per run), so it
shares no throttle window with another test or an earlier run on the shared Redis.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import LiveServer, OAuthClient, ServerPair, free_port
from tests.factories import unique_email
from tests.smtp_sink import CODE_PATTERN, SmtpSink, plain_text
from tests.web.helpers import (
    Authorization,
    Browser,
    assert_unavailable_page,
    hidden_fields,
)

REDIS_URL = os.environ.get("PROVIDER_TEST_REDIS_URL")
REQUIRE_REDIS = os.environ.get("PROVIDER_TEST_REQUIRE_POSTGRES") == "1"
WRONG_PASSWORD = "not the password 123"
NEW_PASSWORD = "saffron glacier tuba"
TRUSTED = {"PROVIDER_TRUSTED_PROXIES": "127.0.0.0/8, ::1"}
# The email-code windows scaled down from minutes to seconds (defaults: sends 3 per
# 2 minutes; wrong codes 5 per minute, 10 per 2 minutes), so the owner's wait is short.
CODE_WINDOWS = {
    "PROVIDER_EMAIL_CODE_THROTTLE": "3 per 6 seconds",
    "PROVIDER_CODE_THROTTLE_ACCOUNT": "5 per 3 seconds; 10 per 6 seconds",
}
LONGEST_CODE_WINDOW_S = 6.0
BURST = 50
MAIL_WAIT_S = 30.0
SLOW_DOWN = {"error": "slow_down", "error_description": "Too many attempts. Try again later."}
BAD_CREDENTIALS = {"error": "invalid_grant",
                   "error_description": "Invalid username or password."}
BAD_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}
UNAVAILABLE = {"error": "temporarily_unavailable",
               "error_description": "The server cannot handle the request right now. "
                                    "Try again later."}


def new_address() -> str:
    """A client address of the documentation range, unique per call and run."""
    return f"198.51.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def require_redis() -> str:
    if not REDIS_URL:
        if REQUIRE_REDIS:
            pytest.fail("PROVIDER_TEST_REDIS_URL is required in CI")
        pytest.skip("no PROVIDER_TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture(scope="module")
def e2e_database(request: pytest.FixtureRequest, postgres_server: str | None) -> str:
    """The session's migrated PostgreSQL database, or the e2e SQLite file without one."""
    if postgres_server is not None:
        return str(request.getfixturevalue("migrated"))
    return str(request.getfixturevalue("sqlite_e2e_url"))


@pytest.fixture(scope="module")
def server(e2e_database: str, keys_dir: Path, e2e_dir: Path,
           mail_sink: SmtpSink) -> Iterator[LiveServer]:
    """One process (memory throttles), behind a trusted proxy range, mailing to the sink."""
    with LiveServer(database_url=e2e_database, keys_dir=keys_dir,
                    rundir=e2e_dir / f"throttles-{secrets.token_hex(3)}",
                    extra_env={**TRUSTED, **CODE_WINDOWS,
                               "PROVIDER_SMTP_URL": mail_sink.url}) as live:
        yield live


def machine_client(server: LiveServer) -> OAuthClient:
    out = server.cli_json("clients", "create", "--name", "machine", "--grant",
                          "client_credentials", "--scope", "profile")
    return OAuthClient(out["client_id"], out["client_secret"])


async def password_attempt(http: httpx.AsyncClient, oauth: OAuthClient, username: str,
                           password: str, address: str) -> httpx.Response:
    return await http.post("/oauth/token", auth=(oauth.client_id, oauth.client_secret),
                           headers=forwarded(address),
                           data={"grant_type": "password", "username": username,
                                 "password": password})


async def secret_attempt(http: httpx.AsyncClient, client_id: str, secret: str,
                         address: str) -> httpx.Response:
    return await http.post("/oauth/token", auth=(client_id, secret), headers=forwarded(address),
                           data={"grant_type": "client_credentials"})


def outcomes(responses: list[httpx.Response]) -> Counter[tuple[int, str]]:
    counted: Counter[tuple[int, str]] = Counter()
    for response in responses:
        body = response.json()
        if response.status_code == 429:
            assert body == SLOW_DOWN
            assert int(response.headers["retry-after"]) >= 1
        counted[(response.status_code, body.get("error", "ok"))] += 1
    return counted


# --- one server: parallel counts like sequential -----------------------------------------


async def test_parallel_wrong_passwords_are_throttled_like_sequential_ones(
    server: LiveServer,
) -> None:
    """Default tiers: 5 wrong passwords per account per minute, then 429 (45 of 50), and
    the right password after the burst waits too."""
    (first, oauth), (second, _) = server.create_account(), server.create_account()
    async with server.http() as http:
        parallel = await asyncio.gather(*(
            password_attempt(http, oauth, first.email, WRONG_PASSWORD, new_address())
            for _ in range(BURST)))
        sequential = [await password_attempt(http, oauth, second.email, WRONG_PASSWORD,
                                             new_address()) for _ in range(BURST)]
        expected = Counter({(400, "invalid_grant"): 5, (429, "slow_down"): BURST - 5})
        assert outcomes(list(parallel)) == expected
        assert outcomes(sequential) == expected
        assert [r.status_code for r in sequential] == [400] * 5 + [429] * (BURST - 5)
        for response in parallel:
            if response.status_code == 400:
                assert response.json() == BAD_CREDENTIALS
        right = await password_attempt(http, oauth, first.email, first.password,
                                       new_address())
        assert right.status_code == 429, right.text


async def test_parallel_wrong_client_secrets_are_throttled_like_sequential_ones(
    server: LiveServer,
) -> None:
    """Default tiers: 10 failures per (client, address) per minute, then 429 with
    Retry-After; the client keeps working from another address."""
    first, second = machine_client(server), machine_client(server)
    attacker = new_address()
    async with server.http() as http:
        parallel = await asyncio.gather(*(
            secret_attempt(http, first.client_id, secrets.token_urlsafe(32), attacker)
            for _ in range(BURST)))
        other_attacker = new_address()
        sequential = [await secret_attempt(http, second.client_id, secrets.token_urlsafe(32),
                                           other_attacker) for _ in range(BURST)]
        expected = Counter({(401, "invalid_client"): 10, (429, "slow_down"): BURST - 10})
        assert outcomes(list(parallel)) == expected
        assert outcomes(sequential) == expected
        assert [r.status_code for r in sequential] == [401] * 10 + [429] * (BURST - 10)
        for response in parallel:
            if response.status_code == 401:
                assert response.json() == BAD_CLIENT
        # The right secret from the attacker's address waits too: else a throttled
        # guesser would learn which of its guesses was right.
        blocked = await secret_attempt(http, first.client_id, first.client_secret, attacker)
        assert blocked.status_code == 429
        assert blocked.json() == SLOW_DOWN
        # From anywhere else the client is served.
        served = await secret_attempt(http, first.client_id, first.client_secret,
                                      new_address())
        assert served.status_code == 200, served.text
        assert served.json()["token_type"] == "Bearer"


async def test_forwarded_for_counts_only_from_a_trusted_range(
    e2e_database: str, keys_dir: Path, e2e_dir: Path,
) -> None:
    """Without 127.0.0.0/8 among the trusted proxies, X-Forwarded-For is ignored: every
    request is the loopback peer's, so changing the header does not escape the throttle."""
    with LiveServer(database_url=e2e_database, keys_dir=keys_dir,
                    rundir=e2e_dir / f"untrusted-{secrets.token_hex(3)}",
                    extra_env={"PROVIDER_TRUSTED_PROXIES": "10.0.0.0/8",
                               "PROVIDER_CLIENT_AUTH_THROTTLE": "3 per hour"}) as live:
        client = machine_client(live)
        async with live.http() as http:
            answers = [await secret_attempt(http, client.client_id, "wrong", new_address())
                       for _ in range(4)]
        assert [a.status_code for a in answers] == [401, 401, 401, 429]


def new_network() -> tuple[str, str]:
    """A /64 of the IPv6 documentation range, unique per call and run, and the next one."""
    high, low = secrets.randbelow(65536), secrets.randbelow(65535)
    return f"2001:db8:{high:x}:{low:x}", f"2001:db8:{high:x}:{low + 1:x}"


Attempt = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]
# Per-address limits of 6, and 4 per (client, address), so that the pair's decides its case.
PER_ADDRESS = {**{name: "6 per minute" for name in (
    "PROVIDER_LOGIN_THROTTLE_ADDRESS", "PROVIDER_CLIENT_AUTH_THROTTLE_ADDRESS",
    "PROVIDER_CODE_THROTTLE_ADDRESS", "PROVIDER_REGISTRATION_THROTTLE")},
    "PROVIDER_CLIENT_AUTH_THROTTLE": "4 per minute"}


def per_address_attempts(oauth: OAuthClient,
                         machine: OAuthClient) -> dict[str, tuple[int, int, Attempt]]:
    """Each throttle counted per client address: its limit (PER_ADDRESS), the status of
    an attempt it lets through, and an attempt that counts against the address alone
    (a fresh account, client or email each time), or against (client, address)."""

    def wrong_password(http: httpx.AsyncClient, address: str) -> Awaitable[httpx.Response]:
        return password_attempt(http, oauth, unique_email("nobody"), WRONG_PASSWORD, address)

    def wrong_secret(http: httpx.AsyncClient, address: str) -> Awaitable[httpx.Response]:
        return secret_attempt(http, machine.client_id, secrets.token_urlsafe(32), address)

    def unknown_client(http: httpx.AsyncClient, address: str) -> Awaitable[httpx.Response]:
        return secret_attempt(http, f"cl_{secrets.token_urlsafe(16)}",
                              secrets.token_urlsafe(32), address)

    def wrong_code(http: httpx.AsyncClient, address: str) -> Awaitable[httpx.Response]:
        return http.post("/auth/verify-email", headers=forwarded(address),
                         json={"email": unique_email("nobody"), "code": "000000"})

    def registration(http: httpx.AsyncClient, address: str) -> Awaitable[httpx.Response]:
        return http.post("/auth/register", headers=forwarded(address),
                         json={"email": unique_email("new"), "password": NEW_PASSWORD})

    return {"login": (6, 400, wrong_password),
            "client authentication per (client, address)": (4, 401, wrong_secret),
            "client authentication per address": (6, 401, unknown_client),
            "email code": (6, 400, wrong_code), "registration": (6, 202, registration)}


async def test_an_ipv6_client_is_throttled_by_its_network(
    e2e_database: str, keys_dir: Path, e2e_dir: Path,
) -> None:
    """Every limit counted per client address counts an IPv6 client by its /64: attempts
    from as many addresses of one /64, in parallel, are throttled like attempts from one
    address, and the next /64 is another client. A sign-in's success gives the /64's
    slot back. A port after a forwarded address does not make a new client."""
    with LiveServer(database_url=e2e_database, keys_dir=keys_dir,
                    rundir=e2e_dir / f"ipv6-{secrets.token_hex(3)}",
                    extra_env={**TRUSTED, **PER_ADDRESS}) as live:
        user, oauth = live.create_account()
        attempts = per_address_attempts(oauth, machine_client(live))
        async with live.http() as http:
            for name, (limit, passed, attempt) in attempts.items():
                network, neighbour = new_network()
                answers = await asyncio.gather(*(attempt(http, f"{network}::{n + 1:x}")
                                                 for n in range(limit + 5)))
                statuses = Counter(a.status_code for a in answers)
                assert statuses == Counter({passed: limit, 429: 5}), (name, statuses)
                other = await attempt(http, f"{neighbour}::1")
                assert other.status_code == passed, (name, other.text)

            network, _ = new_network()
            for n in range(8):
                signed_in = await password_attempt(http, oauth, user.email, user.password,
                                                   f"{network}::{n + 1:x}")
                assert signed_in.status_code == 200, (n, signed_in.text)

            # A proxy that writes the client's port after its address: one client still.
            limit, passed, attempt = attempts["client authentication per address"]
            address = new_address()
            answers = await asyncio.gather(*(attempt(http, f"{address}:{40000 + n}")
                                             for n in range(limit + 5)))
            statuses = Counter(a.status_code for a in answers)
            assert statuses == Counter({passed: limit, 429: 5}), statuses
            # Counted as that address, not as the proxy: the bare address waits too.
            assert (await attempt(http, address)).status_code == 429


# --- email codes: once strangers stop, the owner gets back in ------------------------------


async def forgot(http: httpx.AsyncClient, email: str, address: str) -> None:
    response = await http.post("/auth/forgot-password", json={"email": email},
                               headers=forwarded(address))
    assert response.status_code == 202, response.text


async def reset(http: httpx.AsyncClient, email: str, code: str, address: str,
                password: str = NEW_PASSWORD) -> httpx.Response:
    return await http.post("/auth/reset-password", headers=forwarded(address),
                           json={"email": email, "code": code, "new_password": password})


def code_in(message: Any) -> str:
    codes = CODE_PATTERN.findall(plain_text(message))
    assert len(codes) == 1
    return str(codes[0])


async def test_owner_resets_the_password_after_strangers_sent_wrong_codes(
    server: LiveServer, mail_sink: SmtpSink,
) -> None:
    """Strangers who know only the address fill its send window, kill its code with
    wrong guesses and push the account's wrong-code count to its limit. The owner then
    waits no longer than the longest window (2 minutes by default, 6 s here), gets a
    fresh code that is not dead on arrival, and resets the password."""
    owner, oauth = server.create_account()
    strangers = [new_address() for _ in range(4)]
    async with server.http() as http:
        for n, stranger in enumerate(strangers[:3], start=1):
            await forgot(http, owner.email, stranger)
            mails = await mail_sink.wait_for(owner.email, count=n, timeout=MAIL_WAIT_S)
        live_code = code_in(mails[-1])
        wrong = [f"{(int(live_code) + n) % 1_000_000:06d}" for n in range(1, 13)]
        guesses = await asyncio.gather(*(reset(http, owner.email, guess, strangers[n % 4])
                                         for n, guess in enumerate(wrong)))
        attacked_at = time.monotonic()
        statuses = Counter(g.status_code for g in guesses)
        # At least the 5 that kill the code were compared; the rest waited (exact counts
        # are the business of the minute-long windows above, not of these short ones).
        assert set(statuses) <= {400, 429} and statuses[400] >= 5, statuses
        # The code the owner holds died with the fifth wrong guess.
        dead = await reset(http, owner.email, live_code, new_address())
        assert dead.status_code in (400, 429), dead.text

        # No wait a stranger can cause outlasts the longest window.
        await asyncio.sleep(max(0.0, attacked_at + LONGEST_CODE_WINDOW_S + 0.5
                                - time.monotonic()))
        own_address = new_address()
        await forgot(http, owner.email, own_address)
        fresh = code_in((await mail_sink.wait_for(owner.email, count=4,
                                                  timeout=MAIL_WAIT_S))[-1])
        done = await reset(http, owner.email, fresh, own_address)
        assert done.status_code == 200, done.text
        assert done.json() == {"status": "password_reset"}
        login = await password_attempt(http, oauth, owner.email, NEW_PASSWORD, own_address)
        assert login.status_code == 200, login.text


# --- two servers, one Redis -----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_pair(e2e_database: str, keys_dir: Path, e2e_dir: Path) -> Iterator[ServerPair]:
    url = require_redis()
    with ServerPair(e2e_database, keys_dir, e2e_dir / f"redis-pair-{secrets.token_hex(3)}",
                    {**TRUSTED, "PROVIDER_REDIS_URL": url}) as pair:
        yield pair


async def test_two_servers_sharing_redis_share_the_limits(redis_pair: ServerPair) -> None:
    (user, oauth) = redis_pair[0].create_account()
    machine = machine_client(redis_pair[0])
    attacker = new_address()
    async with redis_pair[0].http() as first, redis_pair[1].http() as second:
        https = (first, second)
        passwords = await asyncio.gather(*(
            password_attempt(https[n % 2], oauth, user.email, WRONG_PASSWORD, new_address())
            for n in range(BURST)))
        assert outcomes(list(passwords)) == Counter({(400, "invalid_grant"): 5,
                                                     (429, "slow_down"): BURST - 5})
        guesses = await asyncio.gather(*(
            secret_attempt(https[n % 2], machine.client_id, secrets.token_urlsafe(16),
                           attacker) for n in range(BURST)))
        assert outcomes(list(guesses)) == Counter({(401, "invalid_client"): 10,
                                                   (429, "slow_down"): BURST - 10})
        for http in https:
            blocked = await secret_attempt(http, machine.client_id, machine.client_secret,
                                           attacker)
            assert blocked.status_code == 429
            served = await secret_attempt(http, machine.client_id, machine.client_secret,
                                          new_address())
            assert served.status_code == 200, served.text
    for live in redis_pair.servers:
        assert "per process" not in live.log()


# --- Redis stopped and restarted under a running server ---------------------------------------


class ThrowawayRedis:
    """`redis-server` on a free loopback port, no persistence, stopped by PID."""

    def __init__(self, rundir: Path) -> None:
        self.port = free_port()
        self.rundir = rundir
        rundir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            cwd=self.rundir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("throwaway redis-server did not start within 10 s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def test_redis_stopped_gives_503_and_service_resumes_when_it_returns(
    e2e_database: str, keys_dir: Path, e2e_dir: Path,
) -> None:
    rundir = e2e_dir / f"redis-outage-{secrets.token_hex(3)}"
    redis = ThrowawayRedis(rundir / "redis")
    redis.start()
    try:
        with LiveServer(database_url=e2e_database, keys_dir=keys_dir, rundir=rundir,
                        extra_env={"PROVIDER_REDIS_URL": redis.url,
                                   "PROVIDER_REDIS_TIMEOUT": "PT1S"}) as live:
            machine = machine_client(live)
            (user, _) = live.create_account()
            web = live.cli_json("clients", "create", "--name", "web", "--grant",
                                "authorization_code", "--redirect-uri",
                                "https://client.example.com/callback", "--first-party",
                                "--scope", "openid")
            async with live.http() as http:
                login_page = await Browser(http).authorize(
                    Authorization(web["client_id"], scope="openid"))
                assert login_page.status_code == 200, login_page.text
                fields = hidden_fields(login_page)
                async def token() -> httpx.Response:
                    return await http.post(
                        "/oauth/token", auth=(machine.client_id, machine.client_secret),
                        data={"grant_type": "client_credentials"})

                assert (await token()).status_code == 200

                redis.stop()
                for _ in range(3):
                    started = time.monotonic()
                    down = await token()
                    assert time.monotonic() - started < 10
                    assert down.status_code == 503, down.text
                    assert down.json() == UNAVAILABLE
                    assert int(down.headers["retry-after"]) >= 1
                problem = await http.post("/auth/verify-email",
                                          json={"email": "someone@example.com",
                                                "code": "123456"})
                assert problem.status_code == 503, problem.text
                assert problem.headers["content-type"] == "application/problem+json"
                assert problem.json()["code"] == "service_unavailable"
                assert problem.headers["retry-after"]
                # The login page is read by a person: a page, not JSON, and no redirect
                # to the client.
                page = await http.post("/oauth/authorize/login",
                                       data={**fields, "username": user.email,
                                             "password": user.password})
                assert_unavailable_page(page)
                # Each of those answers counted: 3 tokens, the problem, the page.
                # (One worker: the process's own metrics, prometheus_client's included.)
                scraped = (await http.get("/metrics")).text
                assert "provider_rate_limit_unavailable_total 5.0" in scraped, scraped
                assert "process_resident_memory_bytes" in scraped
                # What needs no throttle keeps answering.
                assert (await http.get("/.well-known/jwks.json")).status_code == 200

                redis.start()
                deadline = time.monotonic() + 20
                while True:
                    answer = await token()
                    if answer.status_code == 200:
                        break
                    assert answer.status_code == 503, answer.text
                    assert time.monotonic() < deadline, "no recovery within 20 s"
                    await asyncio.sleep(0.2)
            log = live.log()
        assert "Traceback" not in log
        assert "rate-limit storage unavailable" in log
    finally:
        redis.stop()


# --- workers without Redis -----------------------------------------------------------------


def test_workers_without_redis_warn_that_limits_are_per_process(
    live_sqlite: LiveServer,
) -> None:
    assert live_sqlite.workers == 2
    # A log record of the server's own (a JSON line in JSON mode).
    assert ("--workers 2 without PROVIDER_REDIS_URL: every rate limit is per "
            "process, so 2 times looser") in live_sqlite.log()


# --- the login page of the authorization code flow ------------------------------------------


async def test_parallel_wrong_passwords_on_the_login_page_count_like_the_grant(
    server: LiveServer,
) -> None:
    """The login page checks passwords through the password grant's code: 50 parallel
    wrong passwords on the page are answered like 50 sequential ones (5 wrong, then 429
    with Retry-After), and the page and the grant share the account's count."""
    (first, oauth), (second, _) = server.create_account(), server.create_account()
    made = server.cli_json("clients", "create", "--name", "web", "--grant",
                           "authorization_code", "--redirect-uri",
                           "https://client.example.com/callback", "--first-party",
                           "--scope", "openid")
    async with server.http() as http:
        page = await Browser(http).authorize(Authorization(made["client_id"], scope="openid"))
        assert page.status_code == 200, page.text
        fields = hidden_fields(page)

        async def on_page(username: str, password: str) -> httpx.Response:
            return await http.post("/oauth/authorize/login", headers=forwarded(new_address()),
                                   data={**fields, "username": username, "password": password})

        parallel = await asyncio.gather(*(on_page(first.email, WRONG_PASSWORD)
                                          for _ in range(BURST)))
        assert Counter(r.status_code for r in parallel) == Counter({400: 5, 429: BURST - 5})
        for response in parallel:
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "Too many attempts. Try again in" in response.text
            else:
                assert "Invalid username or password." in response.text
        # Shared with the password grant: 3 wrong on the page, 2 by the grant, then 429.
        answers = [(await on_page(second.email, WRONG_PASSWORD)).status_code
                   for _ in range(3)]
        answers += [(await password_attempt(http, oauth, second.email, WRONG_PASSWORD,
                                            new_address())).status_code for _ in range(3)]
        assert answers == [400, 400, 400, 400, 400, 429]
        assert (await on_page(second.email, second.password)).status_code == 429
