"""Refresh tokens: issue, rotate with reuse detection, revoke. SQLAlchemy Core on purpose.

This is the token endpoint's hot path, so each operation is a few hand-written
statements: rotation is one ``UPDATE ... RETURNING`` plus one ``INSERT``. Only the
SHA-256 digest of a token is ever stored or looked up.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.tokens.models import RefreshToken, RevokedAccessToken
from provider.users.models import User

rt = cast(Table, RefreshToken.__table__)
users = cast(Table, User.__table__)
revoked_ats = cast(Table, RevokedAccessToken.__table__)

# 256 bits of entropy (RFC 6749 §10.10 asks for at most 2^-128 guessing odds).
REFRESH_TOKEN_BYTES = 32
MAX_REFRESH_TOKEN_LENGTH = 256


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Session:
    """One refresh-token family as the token endpoint sees it."""

    family_id: uuid.UUID
    user_id: uuid.UUID
    client_id: str
    scope: str
    family_expires_at: datetime
    auth_time: datetime


class Outcome(enum.Enum):
    ROTATED = "rotated"
    INVALID = "invalid"  # unknown, expired, revoked, another client's: nothing written
    REUSED = "reused"  # a rotated token came back: the family was revoked


@dataclass(frozen=True)
class Rotation:
    outcome: Outcome
    session: Session | None = None
    refresh_token: str | None = None


# Statements of the token path are built once: SQLAlchemy then computes their cache
# keys once too, which per request cost about a millisecond (bench/README.md).
_INSERT = insert(rt)


async def issue_refresh_token(
    conn: AsyncConnection,
    *,
    session: Session,
    now: datetime,
    idle_ttl: timedelta,
    parent_id: uuid.UUID | None = None,
) -> str:
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    await conn.execute(_INSERT, {
        "id": uuid.uuid4(),
        "token_hash": digest(token),
        "family_id": session.family_id,
        "parent_id": parent_id,
        "client_id": session.client_id,
        "user_id": session.user_id,
        "scope": session.scope,
        "issued_at": now,
        "expires_at": min(now + idle_ttl, session.family_expires_at),
        "family_expires_at": session.family_expires_at,
        "auth_time": session.auth_time,
    })
    return token


_active_user = exists().where(and_(users.c.id == rt.c.user_id, users.c.is_active.is_(True)))


async def rotate_refresh_token(
    conn: AsyncConnection,
    *,
    token: str,
    client_id: str,
    now: datetime,
    idle_ttl: timedelta,
    reuse_grace: timedelta,
) -> Rotation:
    """Consume ``token`` and issue its successor, or say why not (RFC 9700 §4.14.2)."""
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return Rotation(Outcome.INVALID)
    token_hash = digest(token)
    if conn.dialect.name == "postgresql":
        successor = await rotate_in_one_statement(conn, token_hash, client_id, now, idle_ttl)
        if successor is not None:
            return successor
        return await _explain_refusal(conn, token_hash, client_id, now, idle_ttl, reuse_grace)

    columns = (rt.c.id, rt.c.family_id, rt.c.user_id, rt.c.scope, rt.c.family_expires_at,
               rt.c.auth_time)
    # The WHERE clause is the whole check, so that of two concurrent rotations exactly
    # one matches: the loser's UPDATE re-reads the row after the winner commits.
    row = (
        await conn.execute(
            update(rt)
            .where(
                rt.c.token_hash == token_hash,
                rt.c.client_id == client_id,
                rt.c.rotated_at.is_(None),
                rt.c.revoked_at.is_(None),
                rt.c.expires_at > now,
                rt.c.family_expires_at > now,
                _active_user,
            )
            .values(rotated_at=now)
            .returning(*columns)
        )
    ).first()
    if row is not None:
        return await _successor(conn, row, client_id, now, idle_ttl)
    return await _explain_refusal(conn, token_hash, client_id, now, idle_ttl, reuse_grace)


def _rotation_statement() -> Any:
    """UPDATE ... RETURNING feeding INSERT ... SELECT: PostgreSQL rotates in one round trip.

    Built once; the values travel as bind parameters. The WHERE clause is the same
    whole check as on other databases.
    """
    now = bindparam("p_now", type_=rt.c.issued_at.type)
    consumed = (
        update(rt)
        .where(
            rt.c.token_hash == bindparam("p_token_hash", type_=rt.c.token_hash.type),
            rt.c.client_id == bindparam("p_client_id", type_=rt.c.client_id.type),
            rt.c.rotated_at.is_(None),
            rt.c.revoked_at.is_(None),
            rt.c.expires_at > now,
            rt.c.family_expires_at > now,
            _active_user,
        )
        .values(rotated_at=now)
        .returning(rt.c.id, rt.c.family_id, rt.c.client_id, rt.c.user_id, rt.c.scope,
                   rt.c.family_expires_at, rt.c.auth_time)
        .cte("consumed")
    )
    idle_expiry = bindparam("p_idle_expires_at", type_=rt.c.expires_at.type)
    successor = select(
        bindparam("p_new_id", type_=rt.c.id.type),
        bindparam("p_new_hash", type_=rt.c.token_hash.type),
        consumed.c.family_id, consumed.c.id, consumed.c.client_id, consumed.c.user_id,
        consumed.c.scope, now,
        case((consumed.c.family_expires_at < idle_expiry, consumed.c.family_expires_at),
             else_=idle_expiry),
        consumed.c.family_expires_at, consumed.c.auth_time,
    )
    return (
        insert(rt)
        .from_select(["id", "token_hash", "family_id", "parent_id", "client_id", "user_id",
                      "scope", "issued_at", "expires_at", "family_expires_at", "auth_time"],
                     successor)
        .returning(rt.c.family_id, rt.c.user_id, rt.c.scope, rt.c.family_expires_at,
                   rt.c.auth_time)
    )


_ROTATE = _rotation_statement()


async def rotate_in_one_statement(
    conn: AsyncConnection, token_hash: bytes, client_id: str, now: datetime,
    idle_ttl: timedelta,
) -> Rotation | None:
    """PostgreSQL only: the successor, or None when the token did not qualify (nothing
    was written then; ``rotate_refresh_token`` says why). One statement, so it is atomic
    even in autocommit."""
    token = secrets.token_urlsafe(REFRESH_TOKEN_BYTES)
    # Parameter names differ from column names on purpose: SQLAlchemy would read a
    # `client_id` key as a value for the INSERT's column of that name.
    row = (await conn.execute(_ROTATE, {
        "p_token_hash": token_hash, "p_client_id": client_id, "p_now": now,
        "p_idle_expires_at": now + idle_ttl, "p_new_id": uuid.uuid4(),
        "p_new_hash": digest(token),
    })).first()
    if row is None:
        return None
    return Rotation(Outcome.ROTATED, _session(row, client_id), token)


async def _explain_refusal(
    conn: AsyncConnection, token_hash: bytes, client_id: str, now: datetime,
    idle_ttl: timedelta, reuse_grace: timedelta,
) -> Rotation:
    """Nothing was rotated: say why, and revoke the family when a rotated token is back."""
    columns = (rt.c.id, rt.c.family_id, rt.c.user_id, rt.c.scope, rt.c.family_expires_at,
               rt.c.auth_time)
    old = (
        await conn.execute(
            select(rt.c.id, rt.c.family_id, rt.c.client_id, rt.c.rotated_at, rt.c.revoked_at)
            .where(rt.c.token_hash == token_hash)
        )
    ).first()
    if old is None or old.client_id != client_id or old.revoked_at is not None:
        return Rotation(Outcome.INVALID)
    if old.rotated_at is None:  # expired, or the user was disabled
        return Rotation(Outcome.INVALID)

    if reuse_grace > timedelta(0) and now - old.rotated_at <= reuse_grace:
        # The immediate predecessor of the live token, retried within the grace window
        # (a lost response): supersede the live child and issue a new one from here.
        child = (
            await conn.execute(
                update(rt)
                .where(rt.c.parent_id == old.id, rt.c.rotated_at.is_(None),
                       rt.c.revoked_at.is_(None), rt.c.expires_at > now, _active_user)
                .values(rotated_at=now)
                .returning(rt.c.id)
            )
        ).first()
        if child is not None:
            row = (await conn.execute(select(*columns).where(rt.c.id == old.id))).one()
            return await _successor(conn, row, client_id, now, idle_ttl)

    await revoke_family(conn, old.family_id, now=now)
    return Rotation(Outcome.REUSED)


async def _successor(
    conn: AsyncConnection, row: Row[Any] | Any, client_id: str, now: datetime,
    idle_ttl: timedelta,
) -> Rotation:
    session = _session(row, client_id)
    token = await issue_refresh_token(
        conn, session=session, now=now, idle_ttl=idle_ttl, parent_id=row.id
    )
    return Rotation(Outcome.ROTATED, session, token)


async def revoke_family(conn: AsyncConnection, family_id: uuid.UUID, *, now: datetime) -> None:
    await conn.execute(
        update(rt)
        .where(rt.c.family_id == family_id, rt.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_user_tokens(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    now: datetime,
    keep_family: uuid.UUID | None = None,
) -> None:
    """End every session of a user (optionally all but the caller's own family).

    Refresh families are revoked, which ends their access tokens too; access tokens
    issued without a family die through ``users.sessions_revoked_at``.
    """
    query = update(rt).where(rt.c.user_id == user_id, rt.c.revoked_at.is_(None))
    if keep_family is not None:
        query = query.where(rt.c.family_id != keep_family)
    await conn.execute(query.values(revoked_at=now))
    await conn.execute(
        update(users).where(users.c.id == user_id)
        # Whole seconds, like a token's `iat`: a token from this very second survives.
        .values(sessions_revoked_at=now.replace(microsecond=0))
    )


@dataclass(frozen=True)
class StoredRefreshToken:
    session: Session
    issued_at: datetime
    expires_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None

    def is_live(self, now: datetime) -> bool:
        return (
            self.rotated_at is None
            and self.revoked_at is None
            and self.expires_at > now
            and self.session.family_expires_at > now
        )


async def find_refresh_token(conn: AsyncConnection, token: str) -> StoredRefreshToken | None:
    if not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    row = (
        await conn.execute(
            select(rt.c.family_id, rt.c.user_id, rt.c.client_id, rt.c.scope,
                   rt.c.family_expires_at, rt.c.auth_time, rt.c.issued_at, rt.c.expires_at,
                   rt.c.rotated_at, rt.c.revoked_at)
            .where(rt.c.token_hash == digest(token))
        )
    ).first()
    if row is None:
        return None
    return StoredRefreshToken(
        session=_session(row, row.client_id),
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        rotated_at=row.rotated_at,
        revoked_at=row.revoked_at,
    )


def _session(row: Row[Any] | Any, client_id: str) -> Session:
    return Session(
        family_id=row.family_id,
        user_id=row.user_id,
        client_id=client_id,
        scope=row.scope,
        family_expires_at=row.family_expires_at,
        auth_time=row.auth_time,
    )


async def revoke_access_token(
    conn: AsyncConnection, *, jti: str, expires_at: datetime, now: datetime
) -> None:
    """Deny one access token until it expires; revoking twice is harmless."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        dialect_insert(revoked_ats).values(jti=jti, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["jti"])
    )
    # Entries are only needed while their token could still be presented.
    await conn.execute(delete(revoked_ats).where(revoked_ats.c.expires_at <= now))


def session_is_live(family_id: uuid.UUID | None, jti: str) -> ColumnElement[bool]:
    """A SQL condition: the access token's family is unrevoked and its jti not denied."""
    condition = ~exists().where(revoked_ats.c.jti == jti)
    if family_id is not None:
        condition = and_(
            condition,
            exists().where(rt.c.family_id == family_id, rt.c.revoked_at.is_(None)),
        )
    return condition


def user_token_is_live(family_id: uuid.UUID | None, jti: str, iat: int) -> ColumnElement[bool]:
    """``session_is_live`` for a user's token; to be used in a query over ``users``.

    A token without a family is checked against the user's last end of all sessions.
    """
    condition = session_is_live(family_id, jti)
    if family_id is None:
        issued = datetime.fromtimestamp(iat, UTC)
        condition = and_(condition, or_(users.c.sessions_revoked_at.is_(None),
                                        users.c.sessions_revoked_at <= issued))
    return condition
