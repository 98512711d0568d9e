"""An unreachable database answers 503 with Retry-After, never a 500 or a stack trace."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, literal, select, text
from sqlalchemy.exc import DBAPIError

from provider.app import create_app
from provider.db import (
    Timeouts,
    create_engine,
    fetchrow_autocommit,
    single_statement_engine,
    unavailable_reason,
)
from provider.services import Services
from provider.users.accounts import Mailbox
from tests.conftest import make_settings
from tests.factories import Factory
from tests.helpers import bearer, login
from tests.web.helpers import assert_unavailable_page


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_database_down_answers_503(keys_dir: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
    app = create_app(make_settings(url, keys_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            token = await http.post("/oauth/token", data={
                "grant_type": "client_credentials", "client_id": "cl_x", "client_secret": "s"})
            ready = await http.get("/readyz")
            forgot = await http.post("/auth/verify-email", json={
                "email": "a@example.com", "code": "123456"})
            # The pages of the authorization code flow are read by a person.
            pages = [
                await http.get("/oauth/authorize", params={
                    "response_type": "code", "client_id": "cl_x", "state": "s",
                    "redirect_uri": "https://client.example.com/callback",
                    "code_challenge": "x" * 43, "code_challenge_method": "S256"}),
                await http.get("/oauth/logout", params={"client_id": "cl_x"}),
            ]

    assert token.status_code == 503
    assert token.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The server cannot handle the request right now. Try again later.",
    }
    assert token.headers["retry-after"] == "5"
    assert token.headers["cache-control"] == "no-store"
    assert ready.status_code == 503
    assert ready.json()["code"] == "service_unavailable"
    assert forgot.status_code == 503
    assert forgot.headers["content-type"] == "application/problem+json"
    assert forgot.json() == {
        "type": "about:blank",
        "title": "A service this request needs is unavailable.",
        "status": 503,
        "code": "service_unavailable",
        "detail": "The database is unavailable. Try again shortly.",
    }
    for page in pages:
        assert_unavailable_page(page)


# --- a server that refuses in PostgreSQL's own words --------------------------------------

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104


class RefusingPostgres:
    """A TCP server that speaks just enough of the PostgreSQL protocol to refuse every
    start-up with a FATAL error of the given SQLSTATE, as a server that is starting up
    (57P03), full (53300) or shutting down (57P01) does. ``sqlstate=None``: accept the
    connection and never answer, as a frozen server does."""

    def __init__(self, sqlstate: str | None, message: str = "refused") -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RefusingPostgres:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # (Not wait_closed(): the frozen mode's connections stay open until the client
        # gives up, and then they close themselves.)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/nothing"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")  # no TLS, no GSS: go on in plain text
                    await writer.drain()
                    continue
                await reader.readexactly(length - 8)  # the start-up message's parameters
                break
            if self.sqlstate is None:
                await reader.read()  # frozen: wait for the client to give up
                return
            fields = b"".join(kind + value.encode() + b"\0" for kind, value in (
                (b"S", "FATAL"), (b"V", "FATAL"), (b"C", self.sqlstate), (b"M", self.message)))
            writer.write(b"E" + struct.pack("!i", len(fields) + 5) + fields + b"\0")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _ask(url: str, keys_dir: Path, **settings: Any) -> dict[str, tuple[httpx.Response,
                                                                            float]]:
    """The token endpoint, a problem-document endpoint and /readyz, each timed."""
    app = create_app(make_settings(url, keys_dir, **settings))
    answers: dict[str, tuple[httpx.Response, float]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for name, call in (
                ("token", lambda: http.post("/oauth/token", data={
                    "grant_type": "client_credentials", "client_id": "cl_x",
                    "client_secret": "s"})),
                ("problem", lambda: http.post("/auth/verify-email", json={
                    "email": "a@example.com", "code": "123456"})),
                ("ready", lambda: http.get("/readyz")),
            ):
                started = time.monotonic()
                response = await call()
                answers[name] = (response, time.monotonic() - started)
    return answers


def _assert_unavailable(answers: dict[str, tuple[httpx.Response, float]],
                        within: float) -> None:
    token, problem, ready = (answers[name][0] for name in ("token", "problem", "ready"))
    assert token.status_code == 503, token.text
    assert token.json()["error"] == "temporarily_unavailable"
    assert token.headers["retry-after"] == "5"
    assert problem.status_code == 503, problem.text
    assert problem.json()["code"] == "service_unavailable"
    assert problem.headers["retry-after"] == "5"
    assert ready.status_code == 503, ready.text
    assert answers["ready"][1] < 2.0
    for name, (_, elapsed) in answers.items():
        assert elapsed < within, (name, elapsed)


@pytest.mark.parametrize(("sqlstate", "message"), [
    ("57P03", "the database system is starting up"),
    ("53300", "sorry, too many clients already"),
    ("57P01", "terminating connection due to administrator command"),
    ("08006", "connection failure"),
])
async def test_server_refusing_in_its_own_words_answers_503(
    keys_dir: Path, sqlstate: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with RefusingPostgres(sqlstate, message) as server:
        answers = await _ask(server.url, keys_dir)
    _assert_unavailable(answers, within=2.0)
    # One line per failed request (the readiness line is a warning), naming the SQLSTATE.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert all(e.startswith("database unavailable (POST /") and e.endswith(f" {sqlstate}")
               for e in errors), errors
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("sqlstate", ["57P03", "53300", "57P01", None])
async def test_the_token_paths_bare_checkout_fails_as_sqlalchemy_would(
    sqlstate: str | None,
) -> None:
    # The refresh grant and the sign-in borrow a pooled connection without SQLAlchemy's
    # Connection (provider.db.fetchrow_autocommit). A failed connect must still arrive as
    # SQLAlchemy's DBAPIError, which the app answers 503 in place: anything else reaches
    # the catch-all, which logs a traceback and makes the server close the connection.
    async def attempt(url: str) -> BaseException:
        engine = create_engine(url, timeouts=Timeouts(connect=1.0, statement=5.0, pool=1.0))
        try:
            with pytest.raises(Exception) as caught:
                await fetchrow_autocommit(single_statement_engine(engine),
                                          select(literal(1)), {"param_1": 1})
        finally:
            await engine.dispose()
        return caught.value

    if sqlstate is None:  # nobody listening: refused
        error = await attempt(f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing")
    else:
        async with RefusingPostgres(sqlstate, "refused") as server:
            error = await attempt(server.url)
    assert isinstance(error, DBAPIError), repr(error)
    reason = unavailable_reason(error)
    assert reason is not None
    assert reason.sqlstate == sqlstate


async def test_the_bare_checkout_skips_connections_the_server_closed_in_the_pool(
    settings_keys: tuple[str, Path],
) -> None:
    # After a restart every pooled connection is dead: the token path's bare checkout
    # must not spend a failed request on each of them (SQLAlchemy's own path throws the
    # pool away on the first; ours drops each closed one before using it).
    url, _ = settings_keys
    engine = create_engine(url, pool_size=3, timeouts=Timeouts(connect=5.0, statement=5.0,
                                                               pool=5.0))
    single = single_statement_engine(engine)
    query = select(literal(1))
    pooled: list[Any] = []  # each connection as it goes back to the pool
    event.listen(engine.sync_engine.pool, "checkin",
                 lambda dbapi_connection, _record: pooled.append(dbapi_connection))
    try:
        # The whole pool, held at once (three distinct connections), then checked in.
        held = [await single.raw_connection() for _ in range(3)]
        pids = [await connection.driver_connection.fetchval("SELECT pg_backend_pid()")
                for connection in held]
        for connection in held:
            connection.close()
        assert len(set(pids)) == 3 and len(pooled) == 3
        other = create_engine(url, pool_size=1)  # the administrator's own connection
        try:
            async with other.connect() as admin:
                for pid in pids:
                    await admin.execute(text("SELECT pg_terminate_backend(:pid)"),
                                        {"pid": pid})
        finally:
            await other.dispose()
        # Each pooled connection learns of its end from its socket, without a round trip.
        for _ in range(500):
            if all(connection.driver_connection.is_closed() for connection in pooled):
                break
            await asyncio.sleep(0.01)
        assert all(connection.driver_connection.is_closed() for connection in pooled)
        for _ in range(3):
            assert (await fetchrow_autocommit(single, query, {"param_1": 1}))[0] == 1
    finally:
        await engine.dispose()


async def test_frozen_server_answers_503_within_the_connect_timeout(
    keys_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with RefusingPostgres(None) as server:
        answers = await _ask(server.url, keys_dir, db_connect_timeout=timedelta(seconds=1))
    # Each request waits for the connect timeout; /readyz never more than 1.5 s.
    _assert_unavailable(answers, within=4.0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "database unavailable (POST /oauth/token): timeout",
        "database unavailable (POST /auth/verify-email): timeout",
    ]


# --- statement and pool timeouts on a real PostgreSQL --------------------------------------

async def test_statement_and_pool_timeouts_answer_503_then_service_goes_on(
    settings_keys: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A row locked elsewhere holds a request past the statement timeout (57014); a second
    request meanwhile waits for the pool's only connection past the pool timeout."""
    import asyncpg  # type: ignore[import-untyped]

    database_url, keys_dir = settings_keys
    if not database_url.startswith("postgres"):
        pytest.skip("statement timeouts are PostgreSQL's")
    app = create_app(make_settings(
        database_url, keys_dir, db_pool_size=1, db_pool_timeout=timedelta(seconds=0.5),
        db_statement_timeout=timedelta(seconds=1)))
    async with app.router.lifespan_context(app):
        factory = Factory(app.state.services)
        user, client = await factory.user(), await factory.client()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = bearer((await login(http, client, user))["access_token"])
            locker = await asyncpg.connect(database_url, timeout=10)
            try:
                lock = locker.transaction()
                await lock.start()
                await locker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE",
                                     uuid.UUID(user.id))
                started = time.monotonic()
                update = asyncio.create_task(http.patch(
                    "/users/me", headers=headers, json={"profile": {"name": "Ada"}}))
                while not await locker.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"):
                    assert time.monotonic() - started < 5, "the update never waited"
                    await asyncio.sleep(0.02)
                waiting = await http.get("/users/me", headers=headers)
                updated = await update
                elapsed = time.monotonic() - started
                await lock.rollback()
            finally:
                await locker.close()
            after = await http.get("/users/me", headers=headers)

    for answer in (waiting, updated):
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "service_unavailable"
        assert answer.headers["retry-after"] == "5"
    assert elapsed < 4
    assert after.status_code == 200, after.text  # the cancelled statement's connection
    # (The audit writer's own outage line, if it had events queued, is its business.)
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name == "provider"] == [
        "database unavailable (GET /users/me): pool timeout",
        "database unavailable (PATCH /users/me): QueryCanceledError 57014",
    ]


# --- what reaches the log ---------------------------------------------------------------

SECRET_VALUE = "never-in-a-log-$argon2id$v=19"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_engine_errors_hide_their_parameters(
    backend: str, settings_keys: tuple[str, Path], tmp_path: Path
) -> None:
    url = settings_keys[0] if backend == "postgresql" else f"sqlite:///{tmp_path}/x.db"
    if not url.startswith(backend):
        pytest.skip(f"no {backend}")
    engine = create_engine(url)
    try:
        with pytest.raises(DBAPIError) as raised:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT :value FROM no_such_table"),
                                   {"value": SECRET_VALUE})
    finally:
        await engine.dispose()
    assert SECRET_VALUE not in str(raised.value)
    assert "hidden" in str(raised.value)


async def test_failed_deferred_account_work_logs_one_line_without_values(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    async def work() -> None:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT :value FROM no_such_table"),
                               {"value": SECRET_VALUE})

    async def outage() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    mailbox = Mailbox()
    mailbox.later(work)
    mailbox.later(outage)
    await services.accounts.deliver(mailbox)
    records = [r for r in caplog.records if r.name.startswith("provider")]
    assert [r.getMessage() for r in records] == [
        "deferred account work failed: ProgrammingError",
        "deferred account work failed: database unavailable: ConnectionRefusedError",
    ]
    assert not any(r.exc_info for r in records)


async def test_a_deadlocks_victim_is_unavailable_not_a_fault(
    services: Services, factory: Factory
) -> None:
    """Two transactions that take two rows in opposite orders: PostgreSQL rolls one back
    (40P01). That request is retried with success, so it answers 503 with Retry-After
    like an outage, never 500 (no lock order of ours is known to allow one; this is the
    net under it)."""
    if services.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: no deadlock")
    first, second = uuid.UUID((await factory.user()).id), uuid.UUID((await factory.user()).id)
    both_hold = asyncio.Barrier(2)

    async def lock(order: tuple[uuid.UUID, uuid.UUID]) -> BaseException | None:
        try:
            async with services.engine.begin() as conn:
                for index, user_id in enumerate(order):
                    await conn.execute(text("SELECT id FROM users WHERE id = :id FOR UPDATE"),
                                       {"id": user_id})
                    if index == 0:
                        await both_hold.wait()
        except DBAPIError as exc:
            return exc
        return None

    outcomes = await asyncio.wait_for(
        asyncio.gather(lock((first, second)), lock((second, first))), 30)
    [victim] = [outcome for outcome in outcomes if outcome is not None]
    reason = unavailable_reason(victim)
    assert reason is not None and reason.sqlstate == "40P01", repr(victim)
