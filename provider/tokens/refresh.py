"""Sessions and refresh tokens: start a session, issue, rotate with reuse detection.

RFC 6749 §6 and RFC 9700 §4.14.2. The token endpoint's hot path, so SQLAlchemy Core
statements built once. Whether a token may be rotated is one predicate over the token,
its session and its user, so a revocation (one update of the session or user row) wins
over any rotation, also one in flight: the successor it inserts belongs to a dead
session. On PostgreSQL the common case rotates in one statement in autocommit.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provider.db import fetchrow_autocommit, uuid7
from provider.metrics import REFRESH_REUSE_DETECTED
from provider.tokens.models import LoginSession, RefreshToken
from provider.tokens.revocation import client_still_trusts, revoke_session
from provider.users.models import User

rt = cast(Table, RefreshToken.__table__)
ls = cast(Table, LoginSession.__table__)
users = cast(Table, User.__table__)

# A refresh token is 6 bytes of its issue time (Unix milliseconds) and 32 random bytes,
# 256 bits of entropy (RFC 6749 §10.10 asks for at most 2^-128 guessing odds), in
# base64url: 51 characters. Tokens issued before this format are 43 random characters.
REFRESH_TOKEN_BYTES = 32
_ISSUED_BYTES = 6
REFRESH_TOKEN_LENGTH = 51
MAX_REFRESH_TOKEN_LENGTH = 256


def new_refresh_token() -> str:
    issued = (time.time_ns() // 1_000_000).to_bytes(_ISSUED_BYTES, "big")
    raw = issued + secrets.token_bytes(REFRESH_TOKEN_BYTES)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def digest(token: str) -> bytes:
    """The token's key in ``refresh_tokens.token_hash`` (unique): 32 bytes.

    Of a token in today's format, its issue time and the first 26 bytes (208 bits) of
    its SHA-256: keys sort by issue time, so a new token's key goes to the right-hand end
    of the index and a live token's among recent keys, pages that stay in memory. A bare
    SHA-256, random, put each insert on a random leaf of an index that a long-running
    deployment cannot keep in memory: a page read, and a full-page image in the WAL after
    every checkpoint (6-8 KB of WAL per rotation on the scale benchmark's large database,
    against 1.2 KB on the small one). Of an older token, its whole SHA-256, as it was
    stored. The time is no secret: the token's holder is told when it was issued anyway.
    """
    hashed = hashlib.sha256(token.encode("utf-8")).digest()
    if len(token) != REFRESH_TOKEN_LENGTH:
        return hashed
    try:
        issued = base64.b64decode(token[:8], altchars=b"-_", validate=True)
    except ValueError:  # not base64url: no key it could match
        return hashed
    return issued + hashed[:32 - _ISSUED_BYTES]


@dataclass(frozen=True)
class Session:
    """One sign-in as the token endpoint sees it (the ``sid`` of its access tokens)."""

    id: uuid.UUID
    user_id: uuid.UUID
    client_id: str
    scope: str
    expires_at: datetime
    auth_time: datetime
    amr: tuple[str, ...]
    # Whether the user is an admin now (read with the rotation), for the refreshed scope.
    user_is_admin: bool = False


class Outcome(enum.Enum):
    ROTATED = "rotated"
    INVALID = "invalid"  # unknown, expired, revoked, another client's: nothing written
    REUSED = "reused"  # a rotated token came back: the session was revoked


@dataclass(frozen=True)
class Rotation:
    outcome: Outcome
    session: Session | None = None
    refresh_token: str | None = None
    # Of a REUSED outcome: the session that was revoked and its user (for the audit).
    session_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None


# --- starting a session -------------------------------------------------------------------

_INSERT_SESSION = insert(ls)
_INSERT_TOKEN = insert(rt)


def new_session(*, user_id: uuid.UUID, client_id: str, scope: str, amr: tuple[str, ...],
                now: datetime, absolute_ttl: timedelta, auth_time: datetime | None = None,
                session_id: uuid.UUID | None = None) -> Session:
    """A sign-in's session, not yet recorded: ``auth_time`` is now unless the login
    happened earlier (an authorization code's), whose ``session_id`` it then keeps."""
    return Session(id=session_id or uuid7(), user_id=user_id, client_id=client_id,
                   scope=scope, expires_at=now + absolute_ttl,
                   auth_time=auth_time or now, amr=amr)


def _session_row(session: Session, *, session_epoch: int, now: datetime) -> dict[str, Any]:
    return {"id": session.id, "user_id": session.user_id, "client_id": session.client_id,
            "scope": session.scope, "amr": list(session.amr), "auth_time": session.auth_time,
            "created_at": now, "expires_at": session.expires_at,
            "session_epoch": session_epoch, "revoked_at": None}


def _token_row(session: Session, token: str, *, now: datetime, idle_ttl: timedelta,
               parent_id: uuid.UUID | None) -> dict[str, Any]:
    return {"id": uuid7(), "token_hash": digest(token), "session_id": session.id,
            "parent_id": parent_id, "issued_at": now,
            "expires_at": min(now + idle_ttl, session.expires_at), "rotated_at": None}


async def start_session(conn: AsyncConnection, session: Session, *, session_epoch: int,
                        now: datetime) -> None:
    """Record a sign-in. ``session_epoch`` is the user's, read with the credentials."""
    await conn.execute(_INSERT_SESSION, _session_row(session, session_epoch=session_epoch,
                                                     now=now))


async def issue_refresh_token(
    conn: AsyncConnection,
    *,
    session: Session,
    now: datetime,
    idle_ttl: timedelta,
    parent_id: uuid.UUID | None = None,
) -> str:
    token = new_refresh_token()
    await conn.execute(_INSERT_TOKEN, _token_row(session, token, now=now, idle_ttl=idle_ttl,
                                                 parent_id=parent_id))
    return token


def _pg_sign_in(*, with_token: bool) -> Any:
    """The session's INSERT, and its first refresh token's fed from it: one statement,
    so both rows are written or neither, with no BEGIN and COMMIT round trips."""
    session = insert(ls).values({c.name: bindparam(f"s_{c.name}", type_=c.type)
                                 for c in ls.columns})
    if not with_token:
        return session.returning(ls.c.id)
    new_session = session.returning(ls.c.id).cte("new_session")
    token_columns = [c for c in rt.columns if c.name != "session_id"]
    return insert(rt).from_select(
        [*(c.name for c in token_columns), "session_id"],
        select(*(bindparam(f"t_{c.name}", type_=c.type) for c in token_columns),
               new_session.c.id),
    ).returning(rt.c.id)


_PG_SIGN_IN = {with_token: _pg_sign_in(with_token=with_token) for with_token in (False, True)}


async def start_session_at_once(single: AsyncEngine, session: Session, *, session_epoch: int,
                                now: datetime, idle_ttl: timedelta | None) -> str | None:
    """``start_session`` and, given ``idle_ttl``, ``issue_refresh_token`` (whose token it
    returns), as one statement in autocommit: PostgreSQL's ``single_statement_engine``
    only."""
    row = _session_row(session, session_epoch=session_epoch, now=now)
    # The driver takes JSON as text (provider.db.fetchrow_autocommit).
    params = {f"s_{name}": value for name, value in row.items()}
    params["s_amr"] = json.dumps(row["amr"])
    token = None
    if idle_ttl is not None:
        token = new_refresh_token()
        params.update({f"t_{name}": value for name, value in _token_row(
            session, token, now=now, idle_ttl=idle_ttl, parent_id=None).items()})
    await fetchrow_autocommit(single, _PG_SIGN_IN[token is not None], params)
    return token


# --- the one predicate --------------------------------------------------------------------
# Parameter names differ from column names on purpose: SQLAlchemy would read a `client_id`
# key as a value for an INSERT's column of that name.
P_NOW = bindparam("p_now", type_=rt.c.issued_at.type)
P_HASH = bindparam("p_token_hash", type_=rt.c.token_hash.type)
P_CLIENT = bindparam("p_client_id", type_=ls.c.client_id.type)


def _token_unused() -> list[ColumnElement[bool]]:
    return [rt.c.rotated_at.is_(None), rt.c.expires_at > P_NOW]


def _session_live() -> list[ColumnElement[bool]]:
    """The token's session is the caller's, unexpired, unrevoked, of an active user whose
    sessions have not all been ended since the sign-in, and of a client that has been
    neither deactivated nor reactivated since."""
    return [
        ls.c.id == rt.c.session_id,
        ls.c.client_id == P_CLIENT,
        ls.c.revoked_at.is_(None),
        ls.c.expires_at > P_NOW,
        users.c.id == ls.c.user_id,
        users.c.is_active.is_(True),
        users.c.session_epoch == ls.c.session_epoch,
        *client_still_trusts(ls),
    ]


ROTATABLE = [rt.c.token_hash == P_HASH, *_token_unused(), *_session_live()]
_SESSION_COLUMNS = (ls.c.user_id, ls.c.scope, ls.c.expires_at, ls.c.auth_time, ls.c.amr,
                    users.c.is_admin)


def _pg_rotation() -> Any:
    """UPDATE ... RETURNING feeding INSERT ... SELECT: one round trip, atomic on its own."""
    consumed = (
        update(rt).where(*ROTATABLE).values(rotated_at=P_NOW)
        .returning(rt.c.id, rt.c.session_id, *_SESSION_COLUMNS)
        .cte("consumed")
    )
    idle_expiry = bindparam("p_idle_expires_at", type_=rt.c.expires_at.type)
    successor = (
        insert(rt)
        .from_select(
            ["id", "token_hash", "session_id", "parent_id", "issued_at", "expires_at"],
            select(
                bindparam("p_new_id", type_=rt.c.id.type),
                bindparam("p_new_hash", type_=rt.c.token_hash.type),
                consumed.c.session_id, consumed.c.id, P_NOW,
                case((consumed.c.expires_at < idle_expiry, consumed.c.expires_at),
                     else_=idle_expiry),
            ),
        )
        .returning(rt.c.session_id)
        .cte("successor")
    )
    return select(
        consumed.c.session_id, consumed.c.user_id, consumed.c.scope, consumed.c.expires_at,
        consumed.c.auth_time, consumed.c.amr, consumed.c.is_admin,
    ).join_from(consumed, successor, successor.c.session_id == consumed.c.session_id)


_PG_ROTATE = _pg_rotation()
# Elsewhere (SQLite: no data-modifying CTEs, no RETURNING from joined tables) the same
# predicate in two statements, inside the caller's BEGIN IMMEDIATE transaction.
_CONSUME = (update(rt).where(*ROTATABLE).values(rotated_at=P_NOW)
            .returning(rt.c.id, rt.c.session_id))
_SESSION_OF = (select(ls.c.id.label("session_id"), *_SESSION_COLUMNS)
               .where(ls.c.id == bindparam("p_session_id"), users.c.id == ls.c.user_id))


# --- rotation -----------------------------------------------------------------------------

Check = Callable[[Session], None]


async def rotate(
    engine: AsyncEngine,
    single: AsyncEngine,
    *,
    token: str,
    client_id: str,
    now: datetime,
    idle_ttl: timedelta,
    reuse_grace: timedelta,
    check: Check | None = None,
) -> Rotation:
    """Consume ``token`` and issue its successor, or say why not (RFC 9700 §4.14.2).

    ``check`` runs on the session before anything is kept; what it raises undoes the
    rotation. ``single`` is ``engine`` in autocommit on PostgreSQL (provider.db).
    """
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return Rotation(Outcome.INVALID)
    params = {"p_token_hash": digest(token), "p_client_id": client_id, "p_now": now}
    if check is None and single is not engine:
        # The common case on PostgreSQL: one statement, no BEGIN/COMMIT round trips.
        token = new_refresh_token()
        row = await fetchrow_autocommit(single, _PG_ROTATE, {
            **params, "p_idle_expires_at": now + idle_ttl, "p_new_id": uuid7(),
            "p_new_hash": digest(token),
        })
        if row is not None:
            return Rotation(Outcome.ROTATED, _session(row, client_id), token)
        async with engine.begin() as conn:
            return await _explain_refusal(conn, params, now, idle_ttl, reuse_grace)
    # The transaction commits before we answer, also when reuse revoked the session.
    async with engine.begin() as conn:
        rotation = await _rotate_once(conn, params, now, idle_ttl)
        if rotation is None:
            rotation = await _explain_refusal(conn, params, now, idle_ttl, reuse_grace)
        if check is not None and rotation.session is not None:
            check(rotation.session)  # raising inside the block rolls back
        return rotation


async def _rotate_once(
    conn: AsyncConnection, params: dict[str, Any], now: datetime, idle_ttl: timedelta,
) -> Rotation | None:
    """The rotation inside ``conn``'s transaction, or None when the token did not
    qualify (nothing written)."""
    token = new_refresh_token()
    if conn.dialect.name == "postgresql":
        row = (await conn.execute(_PG_ROTATE, {
            **params, "p_idle_expires_at": now + idle_ttl, "p_new_id": uuid7(),
            "p_new_hash": digest(token),
        })).first()
        if row is None:
            return None
        return Rotation(Outcome.ROTATED, _session(row._mapping, params["p_client_id"]), token)
    consumed = (await conn.execute(_CONSUME, params)).first()
    if consumed is None:
        return None
    return await _successor(conn, consumed.id, consumed.session_id, params["p_client_id"],
                            now, idle_ttl)


def _amr(value: Any) -> tuple[str, ...]:
    """A JSON column read by the driver: text, unless the connection decodes JSON itself."""
    if isinstance(value, str | bytes):
        value = json.loads(value)
    return tuple(value or ())


async def _successor(
    conn: AsyncConnection, parent_id: uuid.UUID, session_id: uuid.UUID, client_id: str,
    now: datetime, idle_ttl: timedelta,
) -> Rotation:
    row = (await conn.execute(_SESSION_OF, {"p_session_id": session_id})).one()
    session = _session(row._mapping, client_id)
    token = await issue_refresh_token(conn, session=session, now=now, idle_ttl=idle_ttl,
                                      parent_id=parent_id)
    return Rotation(Outcome.ROTATED, session, token)


_FIND_FOR_REFUSAL = (
    select(rt.c.id, rt.c.session_id, rt.c.rotated_at, ls.c.client_id, ls.c.user_id)
    .join_from(rt, ls, ls.c.id == rt.c.session_id)
    .where(rt.c.token_hash == P_HASH)
)
# The grace window's retry supersedes the live child: the same predicate, by parent. The
# session is named too, so that it is found by its key whatever the statistics say.
_SUPERSEDE_CHILD = (
    update(rt)
    .where(rt.c.parent_id == bindparam("p_parent_id"),
           rt.c.session_id == bindparam("p_session_id"), *_token_unused(), *_session_live())
    .values(rotated_at=P_NOW)
    .returning(rt.c.id)
)


async def _explain_refusal(
    conn: AsyncConnection, params: dict[str, Any], now: datetime, idle_ttl: timedelta,
    reuse_grace: timedelta,
) -> Rotation:
    """Nothing was rotated: say why, and revoke the session when a rotated token is back."""
    old = (await conn.execute(_FIND_FOR_REFUSAL, params)).first()
    if old is None or old.client_id != params["p_client_id"] or old.rotated_at is None:
        # Unknown, another client's, or unused but expired or of a dead session.
        return Rotation(Outcome.INVALID)

    if reuse_grace > timedelta(0) and now - old.rotated_at <= reuse_grace:
        # The immediate predecessor of the live token, retried within the grace window
        # (a lost response): supersede the live child and issue a new one from here.
        child = await conn.execute(_SUPERSEDE_CHILD, {
            **params, "p_parent_id": old.id, "p_session_id": old.session_id})
        if child.first() is not None:
            return await _successor(conn, old.id, old.session_id, params["p_client_id"],
                                    now, idle_ttl)

    await revoke_session(conn, old.session_id, now=now)
    REFRESH_REUSE_DETECTED.inc()
    return Rotation(Outcome.REUSED, session_id=old.session_id, user_id=old.user_id)


def _session(row: Mapping[Any, Any], client_id: str) -> Session:
    """A rotation's row: SQLAlchemy's (its mapping) or the driver's own record."""
    return Session(
        id=row["session_id"],
        user_id=row["user_id"],
        client_id=client_id,
        scope=row["scope"],
        expires_at=row["expires_at"],
        auth_time=row["auth_time"],
        amr=_amr(row["amr"]),
        user_is_admin=bool(row["is_admin"]),
    )


@dataclass(frozen=True)
class TokenOwner:
    """Whose a refresh token is, live or not: what RFC 7009 revocation needs (one query)."""

    session_id: uuid.UUID
    client_id: str
    user_id: uuid.UUID


async def find_session_of(conn: AsyncConnection, token: str) -> TokenOwner | None:
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    row = (await conn.execute(_FIND_FOR_REFUSAL, {"p_token_hash": digest(token)})).first()
    return TokenOwner(row.session_id, row.client_id, row.user_id) if row is not None else None


# --- lookups (revocation and introspection) ---------------------------------------------

@dataclass(frozen=True)
class StoredRefreshToken:
    session_id: uuid.UUID
    client_id: str
    user_id: uuid.UUID
    scope: str
    issued_at: datetime
    expires_at: datetime
    """The earlier of the token's idle expiry and its session's absolute expiry."""
    is_live: bool
    """Unused, unexpired, and its session alive (the rotation predicate, as of ``now``)."""
    username: str | None
    email: str
    is_admin: bool
    """The user's role now: a refresh grants ``admin`` only to a current admin."""


_FIND = (
    select(rt.c.session_id, ls.c.client_id, ls.c.user_id, ls.c.scope, rt.c.issued_at,
           rt.c.expires_at, ls.c.expires_at.label("session_expires_at"),
           users.c.username, users.c.email, users.c.is_admin)
    .join_from(rt, ls, ls.c.id == rt.c.session_id)
    .join(users, users.c.id == ls.c.user_id)
    .where(rt.c.token_hash == P_HASH)
)
_IS_ROTATABLE = select(select(rt.c.id).where(*ROTATABLE).exists())


async def find_refresh_token(
    conn: AsyncConnection, token: str, *, now: datetime
) -> StoredRefreshToken | None:
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    token_hash = digest(token)
    row = (await conn.execute(_FIND, {"p_token_hash": token_hash})).first()
    if row is None:
        return None
    # Live exactly when its own client could rotate it now: the one predicate.
    live = (await conn.execute(_IS_ROTATABLE, {
        "p_token_hash": token_hash, "p_now": now, "p_client_id": row.client_id,
    })).scalar()
    return StoredRefreshToken(
        session_id=row.session_id, client_id=row.client_id, user_id=row.user_id,
        scope=row.scope, issued_at=row.issued_at,
        expires_at=min(row.expires_at, row.session_expires_at), is_live=bool(live),
        username=row.username, email=row.email, is_admin=row.is_admin,
    )
