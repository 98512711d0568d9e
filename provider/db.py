"""Declarative base, engine and session factories, the per-request unit of work, and
what counts as "the database is unavailable" (answered 503, never 500)."""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from asyncpg.pgproto.pgproto import UUID as _AsyncpgUUID  # type: ignore[import-untyped]
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A tz-aware UTC timestamp on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them in one fixed shape, without offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012


def uuid7() -> uuid.UUID:
    """A time-ordered row key (UUIDv7, RFC 9562 §5.7): 48 bits of Unix milliseconds, the
    version and variant, 74 random bits.

    For the rows written on the token path (sessions, refresh tokens, audit events): a new
    row's primary key lands at the right-hand end of its index, and a token's
    ``parent_id`` and ``session_id`` among the keys of recent rows, a few pages that stay
    cached, where a random UUIDv4 touches a random leaf of an index that on a
    long-running deployment no longer fits in memory. The time is not a secret: a
    session's id (``sid``) says when it began, as its ``auth_time`` does. User ids stay
    random, since ``sub`` should not tell when an account was made.
    """
    ms = time.time_ns() // 1_000_000
    rand = secrets.randbits(74)
    # unix_ts_ms (48) | ver 0b0111 (4) | rand_a (12) | var 0b10 (2) | rand_b (62)
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62) << 64
                     | 0b10 << 62 | (rand & ((1 << 62) - 1)))


def uuid7s(count: int) -> list[uuid.UUID]:
    """``count`` ids laid out as ``uuid7()``'s, for rows written together (the audit
    trail's COPY): one millisecond and one draw from the OS for all of them, each made
    from its 16 bytes as asyncpg's own UUID (a ``uuid.UUID``, built in C), at a fifth of
    the cost of ``uuid7()`` each."""
    ms = (time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF
    prefix = ms.to_bytes(6, "big")
    drawn = secrets.token_bytes(10 * count)
    ids: list[uuid.UUID] = []
    for at in range(0, 10 * count, 10):
        # ver 0b0111 and 4 of rand_a's 12 bits | 8 more | var 0b10 and 6 of rand_b's 62
        # | 56 more: the same 74 random bits as uuid7()
        ids.append(_AsyncpgUUID(prefix + bytes((0x70 | drawn[at] & 0x0F, drawn[at + 1],
                                                0x80 | drawn[at + 2] & 0x3F))
                                + drawn[at + 3:at + 10]))
    return ids


def async_url(url: str) -> str:
    """Map ``postgresql://`` and ``sqlite:///`` URLs to their async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "postgres":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


@dataclass(frozen=True)
class Timeouts:
    """Bounds, in seconds, on every wait for PostgreSQL, so that a database that is down,
    restarting or frozen costs a request a few seconds and a 503, never a hang."""

    connect: float
    """Opening a connection: TCP, TLS, start-up and authentication."""
    statement: float
    """One statement (0: unbounded). The server cancels it (``statement_timeout``, 57014)
    and, should the server itself not answer, the client gives up a second later."""
    pool: float
    """Waiting for a pooled connection when all are in use."""


# The client-side bound waits this much longer than the server's, so that the server's
# own cancellation (clean: the connection stays usable) normally comes first.
CLIENT_STATEMENT_MARGIN_S = 1.0


def create_engine(
    url: str, *, pool_size: int = 20, timeouts: Timeouts | None = None,
    pgbouncer: bool = False, **kwargs: Any
) -> AsyncEngine:
    """An engine for ``url``. ``timeouts`` bound the waits of a serving process; tools
    (migrations, the CLI) leave them out, as a migration may rightly run for minutes.

    ``pgbouncer``: PostgreSQL is reached through a pooler in transaction mode, where a
    server connection serves another client between two transactions. Prepared
    statements are then kept by neither asyncpg nor SQLAlchemy: each statement is
    prepared unnamed, and asyncpg sends its Parse and Describe with Flush, not Sync, so
    the pooler keeps the server connection until the statement has run; nothing named
    is left behind to collide with or to be missing on another server connection. No
    session setting travels at connect either (PgBouncer refuses unknown start-up
    parameters): set ``statement_timeout`` on the database role. The price is one more
    round trip per statement than with a statement cache, which a direct connection
    keeps.

    Every engine hides bound parameters from its error messages: an error that reaches a
    log must not carry an email address or a password hash.
    """
    target = async_url(url)
    kwargs.setdefault("hide_parameters", True)
    if target.startswith("sqlite"):
        # One connection per operation; SQLite serialises writers itself (busy timeout).
        kwargs.setdefault("poolclass", NullPool)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_async_engine(target, **kwargs)
        _configure_sqlite(engine)
        return engine
    # A fixed pool: opening connections under load costs more than waiting for one.
    # No pre-ping (a round trip per checkout on the token path): a connection that died
    # with a database restart fails its request with 503, and the pool replaces it.
    kwargs.setdefault("pool_size", pool_size)
    kwargs.setdefault("max_overflow", 0)
    kwargs.setdefault("pool_recycle", 3600)
    connect_args: dict[str, Any] = {}
    if pgbouncer:
        connect_args.update(statement_cache_size=0, prepared_statement_cache_size=0)
    if timeouts is not None:
        connect_args["timeout"] = timeouts.connect
        if timeouts.statement > 0:
            # Both bounds cost no round trip: the setting travels in the start-up packet
            # and the client bound is a timer around each statement (asyncpg's
            # command_timeout). Only the client bound helps when the server is frozen.
            if not pgbouncer:
                connect_args["server_settings"] = {
                    "statement_timeout": str(int(timeouts.statement * 1000))}
            connect_args["command_timeout"] = timeouts.statement + CLIENT_STATEMENT_MARGIN_S
        kwargs.setdefault("pool_timeout", timeouts.pool)
    if connect_args:
        kwargs.setdefault("connect_args", connect_args)
    engine = create_async_engine(target, **kwargs)
    _discard_broken_connections(engine)
    return engine


def _discard_broken_connections(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # A connection whose statement timed out on the client side (frozen server) or
        # that failed at the connection level is in an unknown state: throw it away
        # rather than return it to the pool, where its next user would wait again.
        # The server's own statement timeout (57014) leaves a healthy connection.
        reason = unavailable_reason(context.original_exception)
        if reason is None or reason.sqlstate == "57014" or context.is_disconnect:
            return
        context.is_disconnect = True
        # Only a restart kills every pooled connection at once; a timeout does not.
        context.invalidate_pool_on_disconnect = reason.sqlstate is not None


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself so that BEGIN IMMEDIATE takes the write lock
        # up front: two refreshes of one token then serialise instead of both reading it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def single_statement_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for work where each statement stands alone (token path reads and
    independent writes). On PostgreSQL it runs in autocommit: no BEGIN and COMMIT or
    ROLLBACK round trips. Use ``begin()`` for writes, so that SQLite, which keeps its
    transactions, commits them too."""
    if is_sqlite(engine):
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


# The statement compiled once per driver: its SQL, and its parameters' order.
_driver_sql: dict[tuple[Any, str], tuple[str, tuple[str, ...]]] = {}


async def fetchrow_autocommit(engine: AsyncEngine, statement: Any,
                              params: dict[str, Any]) -> Any:
    """One row of ``statement``, run by asyncpg itself on a connection of ``engine``'s
    pool, in no transaction: one statement that stands alone (PostgreSQL only).

    SQLAlchemy's execute around a statement, and its Connection around a checkout, cost
    more CPU than the driver's whole round trip (bench/README.md), so the token path's
    common cases borrow the pooled connection bare. Its parameters are plain values
    asyncpg takes as they are (bytes, str, UUID, aware datetimes; JSON goes and comes
    back as text). Failures reach the app as through SQLAlchemy: the database's as a
    ``DBAPIError`` (``IntegrityError`` for a constraint) with no parameters shown, an
    outage as one that ``unavailable_reason`` recognises (503), anything else as it is
    (500). A connection is kept only after the server's own answer to the statement.
    """
    key = (statement, engine.dialect.driver)
    compiled = _driver_sql.get(key)
    if compiled is None:
        made = statement.compile(dialect=engine.dialect)
        compiled = (made.string, tuple(made.positiontup or ()))
        _driver_sql[key] = compiled
    sql, names = compiled
    args = [params[name] for name in names]  # before the checkout: a missing one is ours
    pooled = await _checkout(engine)
    driver: Any = pooled.driver_connection
    try:
        return await driver.fetchrow(sql, *args)
    except BaseException as exc:
        if not isinstance(exc, Exception) or not (
                isinstance(exc, OSError | TimeoutError)
                or type(exc).__module__.partition(".")[0] == "asyncpg"):
            # Cancelled mid-statement, or not the database's error: the connection's
            # state is unknown, and the error goes on as it is.
            pooled.invalidate(exc if isinstance(exc, Exception) else None)
            raise
        reason = unavailable_reason(exc)
        if isinstance(exc, asyncpg.PostgresError) and not driver.is_closed() \
                and (reason is None or reason.sqlstate == "57014"):
            # The server's answer to the statement (a unique key, its own timeout): the
            # connection, in no transaction, stays usable, as _discard_broken_connections
            # decides on SQLAlchemy's path. Class 23 is SQLAlchemy's IntegrityError, as
            # its own execute would have raised it.
            kind = IntegrityError if exc.sqlstate.startswith("23") else DBAPIError
            raise kind(sql, None, exc, hide_parameters=True) from exc
        # Lost, timed out, an outage, or in a state the driver would not go on from: away
        # with the connection, and the request is answered as in an outage (503). Only a
        # value the driver could not encode (its client-side DataError) is our fault (500).
        pooled.invalidate(exc)
        raise DBAPIError(sql, None, exc, hide_parameters=True,
                         connection_invalidated=not isinstance(exc, ValueError)) from exc
    finally:
        # Back to the pool (its reset has nothing to roll back), or away when invalidated.
        await greenlet_spawn(pooled.close)


async def _checkout(engine: AsyncEngine) -> Any:
    """A pooled connection that is still open. One the server closed while it waited in
    the pool (a restart, an administrator) is discarded without a round trip, as the
    next one is tried: a restart costs no 503 per dead connection left in the pool."""
    for _ in range(63):
        pooled = await _raw_connection(engine)
        driver: Any = pooled.driver_connection
        if not driver.is_closed():
            return pooled
        pooled.invalidate()
        await greenlet_spawn(pooled.close)
    # Still closed after so many (a new connection never is): the statement says why.
    return await _raw_connection(engine)


async def _raw_connection(engine: AsyncEngine) -> Any:
    try:
        return await engine.raw_connection()
    except SQLAlchemyError:
        raise  # the pool's own (a checkout timeout)
    except Exception as exc:
        # A failed connect arrives as the driver's error, where SQLAlchemy's Connection
        # would have wrapped it: wrapped the same way, it is an outage (503) like theirs.
        raise DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error,
                                  hide_parameters=True, dialect=engine.dialect) from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def unit_of_work(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit on success and on expected protocol errors.

    An expected error (an OAuthError or ProviderError) still commits, so that a refresh
    family revoked on reuse stays revoked; anything unexpected rolls back. So does an
    expected error raised after a failed flush (a lost unique-key race answered 409):
    the transaction is already void.
    """
    from provider.errors import ExpectedError

    async with sessions() as session:
        try:
            yield session
        except ExpectedError:
            if session.is_active:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


# --- "the database is unavailable" ---------------------------------------------------------

# SQLSTATEs of a database that cannot serve right now, as opposed to a wrong request:
# class 08 (connection exception), operator intervention (admin shutdown, crash
# shutdown, cannot connect now / starting up), statement timeout, too many connections,
# and a transaction the server rolled back so that others could go on (a deadlock's
# victim, a serialization failure): the same request succeeds when retried.
UNAVAILABLE_SQLSTATE_CLASSES = ("08",)
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57014", "53300",
                                   "40P01", "40001"})


@dataclass(frozen=True)
class Unavailable:
    """Why an exception means the database is unavailable: one line for the log."""

    kind: str
    sqlstate: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.sqlstate}" if self.sqlstate else self.kind


_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
})


def _is_network_error(exc: BaseException) -> bool:
    """A failure to reach or keep talking to the server; not, say, a missing file."""
    if isinstance(exc, ConnectionError | socket.gaierror):
        return True
    if not isinstance(exc, OSError):
        return False
    # asyncio's connect to several addresses raises a bare OSError("Multiple exceptions:").
    return exc.errno in _NETWORK_ERRNOS or str(exc).startswith("Multiple exceptions")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error it wraps, and what caused it or was being handled
    (a failed rollback in a ``with`` block hides the first failure in its context)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)


def _said(exc: BaseException, sqlstate: str) -> bool:
    """Whether PostgreSQL answered ``sqlstate`` somewhere in ``exc``'s chain."""
    return any(getattr(current, "sqlstate", None) == sqlstate for current in _chain(exc))


def is_foreign_key_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a row naming one that is gone (23503; SQLite enforces no
    foreign keys here)."""
    return _said(exc, "23503")


def is_nul_in_text(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing a NUL character in text a request sent
    (22021, "invalid byte sequence for encoding UTF8: 0x00"): the request's input, not a
    fault of ours."""
    return _said(exc, "22021")


def unavailable_reason(exc: BaseException) -> Unavailable | None:
    """Why ``exc`` means "the database cannot serve now" (503), or None (a fault: 500).

    Driver errors arrive wrapped (asyncpg's CannotConnectNowError as a plain
    ``sqlalchemy.exc.DBAPIError``), bare (a refused connect is an OSError), or in the
    context of a later error, so the whole chain is examined.
    """
    chain = list(_chain(exc))
    said = [current for current in chain  # the server's own word first
            if isinstance(sqlstate := getattr(current, "sqlstate", None), str)
            and (sqlstate in UNAVAILABLE_SQLSTATES
                 or sqlstate.startswith(UNAVAILABLE_SQLSTATE_CLASSES))]
    if said:
        # The innermost is the driver's own class (QueryCanceledError, not the wrapper).
        return Unavailable(type(said[-1]).__name__, said[-1].sqlstate)  # type: ignore[attr-defined]
    for current in chain:
        if isinstance(current, PoolTimeout):
            return Unavailable("pool timeout")
        if isinstance(current, TimeoutError):  # asyncio's too: connect or statement
            return Unavailable("timeout")
        if _is_network_error(current):  # refused, reset, unreachable, DNS
            return Unavailable(type(current).__name__)
    for current in chain:
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return Unavailable(f"connection lost ({type(current).__name__})")
        # The DB-API's own words for "not the request's fault": lost connections, a
        # locked SQLite file, and asyncpg's "connection is closed".
        if isinstance(current, OperationalError | InterfaceError):
            return Unavailable(type(current).__name__)
        if type(current).__name__ == "InterfaceError" and "connection is closed" in str(current):
            return Unavailable("connection closed")
    return None


class ReadinessProbe:
    """``SELECT 1`` through the pool, answered within ``deadline`` seconds whatever the
    database does.

    A probe that outlives the deadline is not cancelled (cancelling a pool checkout
    half-way can strand a connection): it ends by itself within the engine's timeouts,
    and callers meanwhile share it, so a frozen database never piles up probes.
    """

    def __init__(self, engine: AsyncEngine, deadline: float) -> None:
        self.engine = engine
        self.deadline = deadline
        self._running: asyncio.Task[Unavailable | None] | None = None

    async def check(self) -> Unavailable | None:
        """None when the database answered in time, else why not."""
        task = self._running
        if task is None or task.done():
            task = self._running = asyncio.ensure_future(self._probe())
        done, _ = await asyncio.wait({task}, timeout=self.deadline)
        if not done:
            return Unavailable("readiness probe timed out")
        return task.result()

    async def _probe(self) -> Unavailable | None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return unavailable_reason(exc) or Unavailable(type(exc).__name__)
        return None
