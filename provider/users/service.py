"""Users: creation, lookup for login, and the rules on emails and usernames."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from provider.db import fetchrow_autocommit
from provider.errors import Conflict, NotFound, ValidationFailed
from provider.mfa.models import TotpAuthenticator
from provider.pagination import decode_time_cursor, encode_cursor
from provider.passwords import PasswordHasher, check_password_policy
from provider.tokens.revocation import end_user_sessions
from provider.users.models import User

users = cast(Table, User.__table__)
_totp = cast(Table, TotpAuthenticator.__table__)
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


class UserNotFound(NotFound):
    code = "user_not_found"
    title = "No such user."


class EmailTaken(Conflict):
    code = "email_taken"
    title = "A user with this email already exists."


class UsernameTaken(Conflict):
    code = "username_taken"
    title = "This username is taken."


class InvalidEmail(ValidationFailed):
    code = "invalid_email"
    title = "The email address is not valid."


class InvalidUsername(ValidationFailed):
    code = "invalid_username"
    title = "The username is not valid."


def normalize_email(email: str) -> str:
    """Validate syntax (no DNS lookups) and return the lower-cased address."""
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(str(exc)) from None
    return result.normalized.lower()


def normalize_username(username: str) -> str:
    """Usernames are case-insensitive: stored lower-cased."""
    username = username.strip().lower()
    if not USERNAME.fullmatch(username):
        raise InvalidUsername(
            "2 to 63 characters: letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return username


async def create_user(
    session: AsyncSession,
    hasher: PasswordHasher,
    *,
    email: str,
    password: str,
    min_password_length: int,
    now: datetime,
    username: str | None = None,
    profile: dict[str, Any] | None = None,
    is_admin: bool = False,
    is_verified: bool = False,
) -> User:
    email = normalize_email(email)
    username = normalize_username(username) if username else None
    password = check_password_policy(password, min_length=min_password_length, email=email)
    await ensure_available(session, email=email, username=username)
    user = User(
        id=uuid.uuid4(),
        email=email,
        username=username,
        password_hash=await hasher.hash(password),
        profile=profile or {},
        is_active=True,
        is_verified=is_verified,
        is_admin=is_admin,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:  # lost a race with a concurrent registration
        raise EmailTaken() from None
    # A new user has no second factor: known without asking (an async session cannot
    # load the column property lazily when UserRead reads it).
    set_committed_value(user, "mfa_enabled", False)
    return user


async def ensure_available(
    session: AsyncSession, *, email: str | None = None, username: str | None = None,
    exclude: uuid.UUID | None = None,
) -> None:
    if email is not None:
        query = select(User.id).where(User.email == email)
        if exclude is not None:
            query = query.where(User.id != exclude)
        if await session.scalar(query) is not None:
            raise EmailTaken()
    if username is not None:
        query = select(User.id).where(User.username == username)
        if exclude is not None:
            query = query.where(User.id != exclude)
        if await session.scalar(query) is not None:
            raise UsernameTaken()


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UserNotFound()
    return user


@dataclass(frozen=True)
class LoginCandidate:
    id: uuid.UUID
    email: str
    username: str | None
    password_hash: str | None
    is_active: bool
    is_verified: bool
    is_admin: bool
    # Read with the password hash: a session started from these credentials dies when
    # the user's sessions are ended after this read (provider.tokens.revocation).
    session_epoch: int
    # An active TOTP authenticator: the password alone signs nobody in.
    has_mfa: bool


async def find_login_candidate(engine: AsyncEngine, identifier: str, *,
                               autocommit: bool = False) -> LoginCandidate | None:
    """The user an OAuth ``username`` names: an email address or a username.
    ``autocommit``: ``engine`` is PostgreSQL's ``single_statement_engine``, so the driver
    runs the query itself (provider.db.fetchrow_autocommit)."""
    identifier = identifier.strip()
    if not identifier or len(identifier) > 320:
        return None
    query = _LOGIN_BY_EMAIL if "@" in identifier else _LOGIN_BY_USERNAME
    params = {"identifier": identifier.lower()}
    if autocommit:
        row = await fetchrow_autocommit(engine, query, params)
    else:
        async with engine.connect() as conn:
            row = (await conn.execute(query, params)).first()
    return LoginCandidate(*row) if row is not None else None


# Built once (the password grant's hot path): see provider/tokens/refresh.py.
_LOGIN_COLUMNS = (users.c.id, users.c.email, users.c.username, users.c.password_hash,
                  users.c.is_active, users.c.is_verified, users.c.is_admin,
                  users.c.session_epoch,
                  exists().where(_totp.c.user_id == users.c.id,
                                 _totp.c.confirmed_at.is_not(None)).label("has_mfa"))
_LOGIN_BY_EMAIL = select(*_LOGIN_COLUMNS).where(users.c.email == bindparam("identifier"))
_LOGIN_BY_USERNAME = select(*_LOGIN_COLUMNS).where(users.c.username == bindparam("identifier"))


@dataclass(frozen=True)
class Rehash:
    """A new hash of a password just verified (its parameters changed, or it was an
    imported bcrypt hash), to replace the hash it was verified against."""

    user_id: uuid.UUID
    verified_hash: str
    new_hash: str


async def store_rehash(conn: AsyncConnection, rehash: Rehash, *, now: datetime) -> None:
    """Store the new hash only if the user's hash is still the one verified: a password
    change, reset or account deletion that committed while the sign-in was verifying
    must not be undone by it (the old password would work again)."""
    await conn.execute(
        update(users)
        .where(users.c.id == rehash.user_id, users.c.password_hash == rehash.verified_hash)
        .values(password_hash=rehash.new_hash, updated_at=now)
    )


# --- Admin API: listing, updates and disabling of any user -------------------------------

ADMIN_EDITABLE_FIELDS = frozenset(
    {"email", "username", "profile", "is_active", "is_admin", "is_verified"}
)


class CannotModifySelf(Conflict):
    code = "cannot_modify_self"
    title = "Admins cannot disable or demote their own account."


class LastActiveAdmin(Conflict):
    code = "last_active_admin"
    title = "The change would leave no active admin."


def parse_user_id(raw: str) -> uuid.UUID:
    """A user id from a URL: text that is not a UUID names no user (404, like an unknown id)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise UserNotFound() from None


def _encode_user_cursor(user: User) -> str:
    return encode_cursor(user.created_at.isoformat(), str(user.id))


async def list_users(
    session: AsyncSession,
    *,
    email_prefix: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[User], str | None]:
    """One page of users ordered by (created_at, id), and the cursor of the next page.

    Keyset pagination: a page stays correct while users are added or disabled. The
    email filter is a case-insensitive prefix of the stored (lower-cased) address, with
    LIKE wildcards escaped, so ``a_b`` matches only ``a_b...``.
    """
    query = select(User).order_by(User.created_at, User.id).limit(limit + 1)
    if email_prefix and email_prefix.strip():
        prefix = unicodedata.normalize("NFC", email_prefix.strip()).lower()
        query = query.where(User.email.startswith(prefix, autoescape=True))
    if cursor is not None:
        after_created_at, after_id = decode_time_cursor(cursor)
        query = query.where(
            (User.created_at > after_created_at)
            | ((User.created_at == after_created_at) & (User.id > after_id))
        )
    page = list((await session.scalars(query)).all())
    if len(page) <= limit:
        return page, None
    page = page[:limit]
    return page, _encode_user_cursor(page[-1])


async def lock_active_admins(session: AsyncSession) -> dict[uuid.UUID, int]:
    """Hold the active admins' rows until the request commits, in id order (so that
    concurrent admin changes queue rather than deadlock), FOR NO KEY UPDATE (so that a
    sign-in's foreign-key check of its user is not held off). SQLite ignores it; there
    the write lock serialises requests. Their ids and session epochs."""
    rows = await session.execute(
        select(User.id, User.session_epoch)
        .where(User.is_admin.is_(True), User.is_active.is_(True))
        .order_by(User.id)
        .with_for_update(key_share=True)
    )
    return {row.id: row.session_epoch for row in rows}


async def ensure_another_active_admin(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Raise LastActiveAdmin unless an active admin other than ``user_id`` remains: two
    admins demoting each other at once cannot both succeed."""
    if not any(admin_id != user_id for admin_id in await lock_active_admins(session)):
        raise LastActiveAdmin()


async def update_user_admin(
    session: AsyncSession,
    user_id: uuid.UUID,
    changes: dict[str, Any],
    *,
    actor_id: uuid.UUID | None,
    now: datetime,
) -> User:
    """Apply an admin's partial update; only ADMIN_EDITABLE_FIELDS may be in ``changes``.

    The email is normalised and must be free; a new email is unverified unless
    ``is_verified`` is set in the same change. Disabling revokes every refresh token.
    ``actor_id`` (the admin acting) may not disable or demote themselves.
    """
    unknown = sorted(set(changes) - ADMIN_EDITABLE_FIELDS)
    if unknown:  # the wire schema forbids these already; this guards other callers
        raise ValidationFailed(f"{unknown[0]!r} cannot be changed")
    values = dict(changes)
    if values:
        # An administrator has taken the account in hand (verified, promoted, renamed...):
        # a registration of its address no longer replaces it.
        values["is_registration_pending"] = False
    loses_admin = values.get("is_active") is False or values.get("is_admin") is False
    if loses_admin and user_id == actor_id:
        raise CannotModifySelf()
    user = await get_user(session, user_id)
    if "email" in values:
        values["email"] = normalize_email(values["email"])
        if values["email"] != user.email and "is_verified" not in values:
            values["is_verified"] = False
    if values.get("username") is not None:
        values["username"] = normalize_username(values["username"])
    await ensure_available(
        session, email=values.get("email"), username=values.get("username"), exclude=user.id
    )
    if loses_admin and user.is_admin and user.is_active:
        await ensure_another_active_admin(session, user.id)

    changed = {name: value for name, value in values.items() if getattr(user, name) != value}
    if changed:
        try:
            # A savepoint, so that losing a uniqueness race does not poison the request's
            # transaction. The changes are made inside it: begin_nested() flushes first.
            async with session.begin_nested():
                for name, value in changed.items():
                    setattr(user, name, value)
                user.updated_at = now
                await session.flush()
        except IntegrityError as exc:
            raise (UsernameTaken() if "username" in str(exc.orig) else EmailTaken()) from None
    if values.get("is_active") is False:
        # Also when already disabled: makes sure nothing issued since survives (ASVS 7.4.2).
        await end_user_sessions(await session.connection(), user.id, now=now)
    return user


async def disable_user(
    session: AsyncSession, user_id: uuid.UUID, *, actor_id: uuid.UUID | None, now: datetime
) -> User:
    """The admin API's DELETE: disable the account and revoke its tokens. Idempotent."""
    return await update_user_admin(
        session, user_id, {"is_active": False}, actor_id=actor_id, now=now
    )
