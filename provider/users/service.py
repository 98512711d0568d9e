"""Users: creation, lookup for login, and the rules on emails and usernames."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from provider.errors import Conflict, NotFound, ValidationFailed
from provider.passwords import PasswordHasher, check_password_policy
from provider.users.models import User

users = cast(Table, User.__table__)
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


async def find_login_candidate(conn: AsyncConnection, identifier: str) -> LoginCandidate | None:
    """The user an OAuth ``username`` names: an email address or a username."""
    identifier = identifier.strip()
    if not identifier or len(identifier) > 320:
        return None
    if "@" in identifier:
        condition = users.c.email == identifier.lower()
    else:
        condition = users.c.username == identifier.lower()
    row = (
        await conn.execute(
            select(users.c.id, users.c.email, users.c.username, users.c.password_hash,
                   users.c.is_active, users.c.is_verified, users.c.is_admin).where(condition)
        )
    ).first()
    return LoginCandidate(*row) if row is not None else None


async def update_password_hash(
    conn: AsyncConnection, user_id: uuid.UUID, password_hash: str, *, now: datetime
) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id)
        .values(password_hash=password_hash, updated_at=now)
    )
