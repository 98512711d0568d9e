"""Browser sessions: start (at every login, a new one), find the live one, end.

The cookie holds 256 random bits; the row holds their SHA-256 digest. A login always
starts a new session and ends the one the browser had (no session fixation: a value
planted before the login is worthless after it). Whether a session is live is one
query over the session and its user: not ended, not past its absolute lifetime
(PROVIDER_BROWSER_SESSION_TTL), and the user active in the epoch of the login, so a
password change or reset, disabling or deletion ends every browser session at once. A
session signed in with the password alone stops counting once its user turns two-step
verification on: single sign-on never gives a code without the factor the account now
requires (the login page asks for it again).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.mfa.models import TotpAuthenticator
from provider.mfa.service import SECOND_FACTOR_AMR
from provider.users.models import User
from provider.web.models import BrowserSession

sessions = cast(Table, BrowserSession.__table__)
users = cast(Table, User.__table__)
totp = cast(Table, TotpAuthenticator.__table__)

TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 256


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def cookie_names(issuer: str) -> tuple[str, str]:
    """The session and CSRF cookies' names. On https the ``__Host-`` prefix makes the
    browser insist on Secure, Path=/ and no Domain (no subdomain can plant or read one)."""
    prefix = "__Host-" if issuer.startswith("https://") else ""
    return f"{prefix}provider_session", f"{prefix}provider_csrf"


@dataclass(frozen=True)
class BrowserLogin:
    """A live browser session and what the pages need of its user."""

    id: uuid.UUID
    user_id: uuid.UUID
    auth_time: datetime
    amr: tuple[str, ...]
    session_epoch: int
    email: str
    is_admin: bool
    expires_at: datetime


_FIND = (
    select(sessions.c.id, sessions.c.user_id, sessions.c.auth_time, sessions.c.amr,
           sessions.c.session_epoch, sessions.c.expires_at, users.c.email,
           users.c.is_admin,
           exists().where(totp.c.user_id == users.c.id,
                          totp.c.confirmed_at.is_not(None)).label("has_mfa"))
    .join_from(sessions, users, users.c.id == sessions.c.user_id)
)


async def find_live(conn: AsyncConnection, token: str | None, *,
                    now: datetime) -> BrowserLogin | None:
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    row = (await conn.execute(_FIND.where(
        sessions.c.token_hash == _digest(token), sessions.c.ended_at.is_(None),
        sessions.c.expires_at > now, users.c.is_active.is_(True),
        users.c.session_epoch == sessions.c.session_epoch,
    ))).first()
    if row is None:
        return None
    amr = tuple(row.amr or ())
    if row.has_mfa and SECOND_FACTOR_AMR not in amr:
        return None  # signed in before two-step verification was turned on
    return BrowserLogin(id=row.id, user_id=row.user_id, auth_time=row.auth_time,
                        amr=amr, session_epoch=row.session_epoch,
                        email=row.email, is_admin=bool(row.is_admin),
                        expires_at=row.expires_at)


async def start(conn: AsyncConnection, *, user_id: uuid.UUID, session_epoch: int,
                amr: tuple[str, ...], now: datetime, ttl: timedelta,
                previous_token: str | None) -> str:
    """A new session for a login that just succeeded; the browser's previous one ends."""
    await end(conn, previous_token, now=now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    await conn.execute(insert(sessions).values(
        id=uuid.uuid4(), token_hash=_digest(token), user_id=user_id,
        session_epoch=session_epoch, auth_time=now, amr=list(amr), created_at=now,
        expires_at=now + ttl, ended_at=None,
    ))
    return token


async def end(conn: AsyncConnection, token: str | None, *, now: datetime) -> bool:
    """End the session of this cookie value; whether a live one was ended."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return False
    ended = (await conn.execute(
        update(sessions)
        .where(sessions.c.token_hash == _digest(token), sessions.c.ended_at.is_(None))
        .values(ended_at=now)
        .returning(sessions.c.id)
    )).first()
    return ended is not None
