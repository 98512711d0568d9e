"""Ending sessions and tokens, and the one check of whether an access token still stands.

Every revocation is one update of the row that stands for what it ends: a session
(RFC 7009, reuse detection), a user (``session_epoch``: password change or reset,
disabling, deletion), a client's sessions (deactivation), or one access token (the
denylist). Rotation and this check read those rows, so a revocation that has answered
wins over anything in flight.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    case,
    delete,
    exists,
    false,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.clients.models import Client
from provider.tokens.jwt import AccessClaims
from provider.tokens.models import LoginSession, RevokedAccessToken
from provider.users.models import User

ls = cast(Table, LoginSession.__table__)
users = cast(Table, User.__table__)
clients = cast(Table, Client.__table__)
revoked_ats = cast(Table, RevokedAccessToken.__table__)


def client_still_trusts(sessions: Table) -> list[ColumnElement[bool]]:
    """SQL conditions: the session's client is active and has not been reactivated since
    the session started. Deactivation revokes a client's sessions, but a sign-in through
    another process's stale client cache (provider.clients.service.ClientCache) can start
    one after it; reactivation must not bring that one to life. ``reactivated_at`` is
    the reactivating host's time and ``created_at`` the signing-in host's: their clocks
    must agree (as token expiry needs anyway), or a session started within the skew of
    a reactivation is refused, or one started within it before is not."""
    return [
        clients.c.client_id == sessions.c.client_id,
        clients.c.is_active.is_(True),
        or_(clients.c.reactivated_at.is_(None),
            clients.c.reactivated_at <= sessions.c.created_at),
    ]


async def revoke_session(conn: AsyncConnection, session_id: uuid.UUID, *, now: datetime) -> None:
    """End one session: its refresh tokens and access tokens stop working."""
    await conn.execute(
        update(ls).where(ls.c.id == session_id, ls.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_session_of(conn: AsyncConnection, session_id: uuid.UUID, *,
                            user_id: uuid.UUID, client_id: str, now: datetime) -> None:
    """End one session, if it is this user's with this client (OIDC logout's ``sid``)."""
    await conn.execute(
        update(ls).where(ls.c.id == session_id, ls.c.user_id == user_id,
                         ls.c.client_id == client_id, ls.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def end_user_sessions(
    conn: AsyncConnection, user_id: uuid.UUID, *, now: datetime,
    keep: uuid.UUID | None = None,
) -> None:
    """End every session of a user, optionally all but the caller's own (ASVS 7.4.3).

    The user's epoch moves on, which also kills a sign-in that read the old credentials
    and has not yet stored its session; the sessions are marked in one statement, and
    the kept one moves to the new epoch.
    """
    epoch = (
        await conn.execute(
            update(users).where(users.c.id == user_id)
            .values(session_epoch=users.c.session_epoch + 1)
            .returning(users.c.session_epoch)
        )
    ).scalar_one()
    revoked_at = now if keep is None else case((ls.c.id == keep, None), else_=now)
    await conn.execute(
        update(ls).where(ls.c.user_id == user_id, ls.c.revoked_at.is_(None))
        .values(revoked_at=revoked_at, session_epoch=epoch)
    )


async def end_client_sessions(conn: AsyncConnection, client_id: str, *, now: datetime) -> None:
    """A deactivated client's sessions end with it, for good (reactivation revives none)."""
    await conn.execute(
        update(ls).where(ls.c.client_id == client_id, ls.c.revoked_at.is_(None))
        .values(revoked_at=now)
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


def token_user_id(claims: AccessClaims) -> uuid.UUID | None:
    """The user an access token speaks for; None for a client acting for itself."""
    try:
        return uuid.UUID(claims.sub)
    except ValueError:
        return None  # client_credentials: `sub` is the client id (cl_...)


def access_token_stands(claims: AccessClaims) -> ColumnElement[bool]:
    """SQL condition: the (signature-checked) access token has not been revoked.

    For a user's token it is to be used in a query over ``users`` (it correlates): the
    user is active and the token's session (``sid``) is the user's, of the token's
    client, unrevoked, of the user's current epoch, and its client active and not
    reactivated since the session started. A client's
    own token stands while the client is active. Either way its ``jti`` is not denied.
    One indexed lookup per table; used by bearer authentication and introspection alike.
    """
    not_denied = ~exists().where(revoked_ats.c.jti == claims.jti)
    user_id = token_user_id(claims)
    if user_id is None:
        # Issued after the client was last reactivated: `iat` has whole seconds, so a
        # token of that very second counts as after (only one issued in the seconds a
        # stale client cache elsewhere still served the deactivated client could be
        # older). And issued in a second after the last deactivation: a token of the
        # deactivation's second may be older than it, so it stays dead even when the
        # reactivation fell in that second too (tokens issued in the rest of it with it).
        issued_by_next_second = datetime.fromtimestamp(claims.iat + 1, UTC)
        issued_second = datetime.fromtimestamp(claims.iat, UTC)
        client_active = exists().where(
            clients.c.client_id == claims.client_id,
            clients.c.is_active.is_(True),
            or_(clients.c.reactivated_at.is_(None),
                clients.c.reactivated_at < issued_by_next_second),
            or_(clients.c.deactivated_at.is_(None),
                clients.c.deactivated_at < issued_second),
        )
        return and_(client_active, not_denied)
    try:
        session_id = uuid.UUID(claims.sid) if claims.sid else None
    except ValueError:
        session_id = None
    if session_id is None:
        return false()  # every user token is issued within a session
    session_live = exists().where(
        ls.c.id == session_id,
        ls.c.user_id == users.c.id,
        ls.c.client_id == claims.client_id,
        ls.c.revoked_at.is_(None),
        ls.c.session_epoch == users.c.session_epoch,
        *client_still_trusts(ls),
    )
    return and_(users.c.id == user_id, users.c.is_active.is_(True), session_live, not_denied)


@dataclass(frozen=True)
class TokenStatus:
    """An access token that stands, and what introspection may tell of its user."""

    user_id: uuid.UUID | None
    username: str | None = None
    email: str | None = None
    is_admin: bool = False


async def token_status(conn: AsyncConnection, claims: AccessClaims) -> TokenStatus | None:
    """The access token's status, or None when it was revoked (one query)."""
    condition = access_token_stands(claims)
    user_id = token_user_id(claims)
    if user_id is None:
        stands = (await conn.execute(select(condition))).scalar()
        return TokenStatus(None) if stands else None
    row = (await conn.execute(
        select(users.c.username, users.c.email, users.c.is_admin).where(condition))).first()
    if row is None:
        return None
    return TokenStatus(user_id, row.username, row.email, bool(row.is_admin))
