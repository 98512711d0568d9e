"""Database outages under load: a real `provider serve` on a PostgreSQL of
the test's own (tests.pgserver.throwaway_postgres, never the shared server), which is
stopped, restarted, frozen with SIGSTOP and has its connections killed while clients
keep sending requests.

What must hold (DESIGN.md, Operations): every answer that needs the database is either
its usual one or 503 with Retry-After (``temporarily_unavailable`` under /oauth/, a
problem document elsewhere), never a 500 and never a hang; /readyz answers 503 within
2 s; JWKS, discovery and /healthz answer 200 throughout; service resumes by itself; the
server log has one line per failure and no traceback; and afterwards the tables hold no
half-written state.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import REQUIRE_POSTGRES, migrate
from tests.e2e.conftest import LiveServer, OAuthClient, User
from tests.pgserver import (
    ProvisionError,
    ThrowawayCluster,
    _run_sync,
    create_database,
    database_url,
    throwaway_postgres,
)
from tests.smtp_sink import SmtpSink

LOAD_WORKERS = 6
# Every client request is bounded: a hang fails the test instead of stalling it.
CLIENT_TIMEOUT_S = 20.0
# The worst a request may take during an outage with the timeouts below: waiting for a
# pooled connection, then for a new connection, then for a statement, then closing it.
WORST_ANSWER_S = 12.0
READY_WITHIN_S = 2.0
RESUME_WITHIN_S = 30.0
DB_TIMEOUTS = {
    "PROVIDER_DB_CONNECT_TIMEOUT": "2",
    "PROVIDER_DB_STATEMENT_TIMEOUT": "2",
    "PROVIDER_DB_POOL_TIMEOUT": "2",
    # Small pools, so that the load also meets pool checkout timeouts.
    "PROVIDER_DB_POOL_SIZE": "3",
}
UNAVAILABLE_OAUTH = {
    "error": "temporarily_unavailable",
    "error_description": "The server cannot handle the request right now. Try again later.",
}
UNAVAILABLE_PROBLEM = {
    "type": "about:blank",
    "title": "A service this request needs is unavailable.",
    "status": 503,
    "code": "service_unavailable",
    "detail": "The database is unavailable. Try again shortly.",
}
# What the server may log while the database is away: one line per failure.
EXPECTED_LOG_LINE = re.compile(
    r"database unavailable \((GET|POST) /[\w/.-]+\): \S.*"
    r"|not ready: database unavailable: \S.*"
    r"|deferred account work failed: database unavailable: \S.*"
    # The audit writer keeps its queue through an outage: one line when writing stops
    # working, one when it works again (provider.audit.service).
    r"|audit events not written yet \(\d+ waiting\): \S.*"
    r"|audit events written again: \d+"
)


@dataclass
class Answer:
    kind: str
    phase: str
    status: int
    elapsed: float
    body: object
    retry_after: str | None


@dataclass
class Load:
    """Clients sending a mix of requests until told to stop; every answer is kept."""

    server: LiveServer
    user: User
    client: OAuthClient
    phase: str = "warm-up"
    answers: list[Answer] = field(default_factory=list)
    stopping: bool = False

    async def _send(self, http: httpx.AsyncClient, kind: str, method: str, path: str,
                    **kwargs: object) -> httpx.Response | None:
        phase, started = self.phase, time.monotonic()
        try:
            response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException:
            self.answers.append(Answer(kind, phase, 0, time.monotonic() - started, None, None))
            return None
        try:
            body: object = response.json()
        except ValueError:
            body = response.text
        self.answers.append(Answer(kind, phase, response.status_code,
                                   time.monotonic() - started, body,
                                   response.headers.get("retry-after")))
        return response

    async def worker(self, number: int) -> None:
        refresh_token: str | None = None
        access_token: str | None = None
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=CLIENT_TIMEOUT_S,
                                     trust_env=False) as http:
            round_no = 0
            while not self.stopping:
                round_no += 1
                if refresh_token is None:
                    got = await self._send(http, "login", "POST", "/oauth/token",
                                           auth=self.client.auth, data={
                                               "grant_type": "password", "scope": "openid account",
                                               "username": self.user.email,
                                               "password": self.user.password})
                else:
                    got = await self._send(http, "refresh", "POST", "/oauth/token",
                                           auth=self.client.auth, data={
                                               "grant_type": "refresh_token",
                                               "refresh_token": refresh_token})
                if got is not None and got.status_code == 200:
                    refresh_token = got.json()["refresh_token"]
                    access_token = got.json()["access_token"]
                elif got is not None and got.status_code == 400:
                    # Rotated by a request whose answer was lost: reuse revoked the session.
                    refresh_token = access_token = None
                if access_token is not None:
                    await self._send(http, "introspect", "POST", "/oauth/introspect",
                                     auth=self.client.auth, data={"token": access_token})
                    await self._send(http, "me", "GET", "/users/me",
                                     headers={"Authorization": f"Bearer {access_token}"})
                if round_no % 3 == number % 3:
                    await self._send(http, "register", "POST", "/auth/register", json={
                        "email": f"outage-{secrets.token_hex(6)}@example.com",
                        "password": "a long outage password"})
                await self._send(http, "jwks", "GET", "/.well-known/jwks.json")
                await self._send(http, "discovery", "GET",
                                 "/.well-known/openid-configuration")
                await self._send(http, "healthz", "GET", "/healthz")

    async def readiness(self) -> None:
        async with httpx.AsyncClient(base_url=self.server.base_url, timeout=CLIENT_TIMEOUT_S,
                                     trust_env=False) as http:
            while not self.stopping:
                await self._send(http, "readyz", "GET", "/readyz")
                await asyncio.sleep(0.2)

    def since(self, start: int) -> list[Answer]:
        return self.answers[start:]


DATABASE_KINDS = {"login", "refresh", "introspect", "me"}
ALWAYS_UP_KINDS = {"jwks", "discovery", "healthz"}


def check_answer(answer: Answer) -> None:
    """The contract of one answer, whatever the database was doing."""
    where = f"{answer.kind} in {answer.phase}: {answer.status} {answer.body!r}"
    assert answer.status != 0, f"no answer within {CLIENT_TIMEOUT_S} s: {where}"
    assert answer.elapsed < WORST_ANSWER_S, f"took {answer.elapsed:.1f} s: {where}"
    if answer.kind in ALWAYS_UP_KINDS:
        assert answer.status == 200, where
        return
    if answer.status == 503:
        assert answer.retry_after == "5", where
        oauth = answer.kind in {"login", "refresh", "introspect"}
        if answer.kind == "readyz":
            assert answer.elapsed < READY_WITHIN_S, where
        else:
            assert answer.body == (UNAVAILABLE_OAUTH if oauth else UNAVAILABLE_PROBLEM), where
        return
    expected = {"login": {200}, "refresh": {200, 400}, "introspect": {200}, "me": {200},
                "register": {202}, "readyz": {200}}[answer.kind]
    assert answer.status in expected, where
    if answer.kind == "refresh" and answer.status == 400:
        # Legitimate after a 503 whose rotation the database had already done.
        assert answer.body == {"error": "invalid_grant", "error_description":
                               "The grant or refresh token is invalid, expired or revoked."}


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[ThrowawayCluster]:
    try:
        with throwaway_postgres() as cluster:
            yield cluster
    except ProvisionError as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"cannot start a throwaway PostgreSQL: {exc}")
        pytest.skip(f"cannot start a throwaway PostgreSQL: {exc}")


@pytest.fixture(scope="module")
def outage_server(own_postgres: ThrowawayCluster, keys_dir: Path, e2e_dir: Path,
                  mail_sink: SmtpSink) -> Iterator[LiveServer]:
    url = create_database(own_postgres.url, "outage")
    migrate(url)
    with LiveServer(database_url=url, keys_dir=keys_dir, rundir=e2e_dir / "outage",
                    extra_env={**DB_TIMEOUTS, "PROVIDER_SMTP_URL": mail_sink.url,
                               "PROVIDER_REGISTRATION_THROTTLE": "100000 per minute",
                               # The load signs one account in from several tasks at once:
                               # each attempt holds an account slot while it runs.
                               "PROVIDER_LOGIN_THROTTLE_ACCOUNT": "100000 per minute",
                               "PROVIDER_EMAIL_CODE_THROTTLE": "100000 per minute"}
                    ) as server:
        yield server


async def wait_resumed(load: Load, label: str) -> None:
    """Service resumes by itself: a run of database answers all succeed, in time."""
    load.phase = f"{label}: resuming"
    deadline = time.monotonic() + RESUME_WITHIN_S
    start = len(load.answers)
    while True:
        recent = [a for a in load.since(start) if a.kind in DATABASE_KINDS | {"readyz"}]
        tail = recent[-3 * LOAD_WORKERS:]
        if len(tail) == 3 * LOAD_WORKERS and all(a.status in (200, 400) for a in tail):
            return
        assert time.monotonic() < deadline, (
            f"{label}: no recovery within {RESUME_WITHIN_S} s: "
            f"{[(a.kind, a.status) for a in recent[-20:]]}")
        await asyncio.sleep(0.2)


async def run_phase(load: Load, label: str, seconds: float) -> list[Answer]:
    load.phase = label
    start = len(load.answers)
    await asyncio.sleep(seconds)
    return load.since(start)


def kill_connections(cluster: ThrowawayCluster) -> None:
    async def terminate() -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(database_url(cluster.url, "outage"), timeout=10)
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = 'outage' AND pid <> pg_backend_pid()")
        finally:
            await conn.close()

    _run_sync(terminate)


async def test_outages_under_load_answer_503_and_service_resumes(
    outage_server: LiveServer, own_postgres: ThrowawayCluster
) -> None:
    user, client = outage_server.create_account(scope="openid profile email account")
    log_start = len(outage_server.log())
    load = Load(outage_server, user, client)
    tasks = [asyncio.create_task(load.worker(n)) for n in range(LOAD_WORKERS)]
    tasks.append(asyncio.create_task(load.readiness()))
    outages: dict[str, list[Answer]] = {}
    try:
        await run_phase(load, "warm-up", 1.5)

        # Stopped (fast shutdown: 57P01 to every connection), then refused.
        await asyncio.to_thread(own_postgres.stop_server, "fast")
        outages["stopped"] = await run_phase(load, "stopped", 4)
        await asyncio.to_thread(own_postgres.start_server)
        await wait_resumed(load, "stopped")

        # Crashed and restarted at once: refused, then "starting up" (57P03) during recovery.
        await asyncio.to_thread(own_postgres.stop_server, "immediate")
        await asyncio.to_thread(own_postgres.start_server, wait=False)
        outages["restarted"] = await run_phase(load, "restarted", 2)
        await wait_resumed(load, "restarted")

        # Frozen: connections accepted by the kernel, then silence (statement, connect and
        # pool timeouts).
        own_postgres.freeze()
        try:
            outages["frozen"] = await run_phase(load, "frozen", 8)
        finally:
            own_postgres.thaw()
        await wait_resumed(load, "frozen")

        # Every pooled connection killed by an administrator (57P01).
        await asyncio.to_thread(kill_connections, own_postgres)
        outages["killed"] = await run_phase(load, "killed", 2)
        await wait_resumed(load, "killed")

        after = await run_phase(load, "after", 2)
    finally:
        load.stopping = True
        own_postgres.thaw()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), CLIENT_TIMEOUT_S + 5)
        except Exception as exc:
            # A client's error (a connection the server closed) says little on its own.
            raise AssertionError(f"a load client failed: {exc!r}; server log:\n"
                                 f"{outage_server.log()[log_start:][-5000:]}") from exc

    print(summary(load.answers))
    for answer in load.answers:
        check_answer(answer)
    for label in ("stopped", "frozen"):
        answers = outages[label]
        failed = [a for a in answers if a.kind in DATABASE_KINDS and a.status == 503]
        assert failed, f"{label}: no 503 at all: {[(a.kind, a.status) for a in answers]}"
        assert any(a.kind == "readyz" and a.status == 503 for a in answers), label
        assert not any(a.kind in DATABASE_KINDS and a.status == 200 for a in answers[
            len(answers) // 2:]), f"{label}: answered from a database that was away"
    assert [a for a in after if a.status == 503] == [], "503 after service resumed"
    assert any(a.kind == "refresh" and a.status == 200 for a in after)

    log = outage_server.log()[log_start:]
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 500):][:5000]
    # Every request's access line is there too (provider.access): the rest is checked.
    lines = [line for line in log.splitlines()
             if line.strip() and " provider.access: " not in line]
    unexpected = [line for line in lines if not EXPECTED_LOG_LINE.search(line)]
    assert unexpected == [], unexpected[:20]
    answered_503 = [a for a in load.answers if a.status == 503 and a.kind != "readyz"]
    logged = [line for line in lines if "database unavailable (" in line]
    assert len(logged) == len(answered_503), (len(logged), len(answered_503))
    print("\n".join(sorted({re.sub(r"\(.*?\)", "(...)", line) for line in lines})))

    await check_invariants(own_postgres)


def summary(answers: list[Answer]) -> str:
    """Answers per phase and status, and the slowest, for the test's output."""
    counts: dict[str, dict[int, int]] = {}
    slowest: dict[str, float] = {}
    for a in answers:
        phase = a.phase.split(":")[0]
        counts.setdefault(phase, {}).setdefault(a.status, 0)
        counts[phase][a.status] += 1
        slowest[phase] = max(slowest.get(phase, 0.0), a.elapsed)
    ready = max((a.elapsed for a in answers if a.kind == "readyz" and a.status == 503),
                default=0.0)
    return "\n".join([f"{p}: {c} slowest {slowest[p]:.2f} s" for p, c in counts.items()]
                     + [f"slowest /readyz 503: {ready:.2f} s"])


async def check_invariants(cluster: ThrowawayCluster) -> None:
    """No half-written state after the outages (run against the database directly).

    A token's liveness is read from its session row in the same predicate that rotates
    it (provider.tokens.refresh), so a token in a revoked session is dead by construction;
    what an outage could break is the atomicity of the writes, checked here.
    """
    import asyncpg

    conn = await asyncpg.connect(database_url(cluster.url, "outage"), timeout=10)
    try:
        # A token is rotated once (strict reuse detection): never two children.
        two_children = await conn.fetch(
            "SELECT parent_id FROM refresh_tokens WHERE parent_id IS NOT NULL "
            "GROUP BY parent_id HAVING count(*) > 1")
        # Rotation consumes and inserts atomically: one unrotated token per session.
        two_unrotated = await conn.fetch(
            "SELECT session_id FROM refresh_tokens WHERE rotated_at IS NULL "
            "GROUP BY session_id HAVING count(*) > 1")
        # A sign-in writes its session and first token together (the client has the
        # refresh grant).
        sessions_without_token = await conn.fetch(
            "SELECT s.id FROM login_sessions s LEFT JOIN refresh_tokens t "
            "ON t.session_id = s.id WHERE t.id IS NULL")
        # Registration writes the user and its verification code together.
        half_registered = await conn.fetch(
            "SELECT u.email FROM users u LEFT JOIN email_codes c ON c.user_id = u.id "
            "AND c.purpose = 'verify_email' WHERE u.email LIKE 'outage-%' AND c.id IS NULL")
        registrations = await conn.fetchval(
            "SELECT count(*) FROM users WHERE email LIKE 'outage-%'")
        revoked = await conn.fetchval(
            "SELECT count(*) FROM login_sessions WHERE revoked_at IS NOT NULL")
    finally:
        await conn.close()
    assert two_children == []
    assert two_unrotated == []
    assert sessions_without_token == []
    assert half_registered == [], "users without their verification code"
    assert registrations > 0
    print(f"registrations: {registrations}, sessions revoked on reuse: {revoked}")
