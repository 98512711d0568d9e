"""The users table."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Uuid, exists, false
from sqlalchemy.orm import Mapped, column_property, mapped_column

from provider.db import Base
from provider.mfa.models import TotpAuthenticator


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Stored normalised (lower-cased), so the unique index is case-insensitive.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    username: Mapped[str | None] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # A self-registration whose address nobody has verified yet. Its password is that of
    # whoever registered the address last: a later registration of the address replaces
    # it, so that a stranger who registered someone's address first does not get the
    # account once its owner verifies it (pre-account hijacking). Cleared when the
    # address is verified; never set on an account an administrator created.
    is_registration_pending: Mapped[bool] = mapped_column(Boolean, default=False,
                                                          server_default=false())
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Bumped whenever all the user's sessions end (password change or reset, disabling,
    # deletion): a session signed in under an older epoch is dead, also one whose sign-in
    # was still in flight when the revocation answered.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Whether an active (confirmed) TOTP authenticator exists: read with the user, never
    # stored twice. Not expired by a flush of the user (an async session cannot lazy-load
    # it back); a request that changes MFA answers from what it did, not from this.
    mfa_enabled: Mapped[bool] = column_property(
        exists().where(TotpAuthenticator.user_id == id,
                       TotpAuthenticator.confirmed_at.is_not(None)),
        expire_on_flush=False,
    )

    # The admin list pages through users in (created_at, id) order.
    __table_args__ = (Index("ix_users_created_at_id", "created_at", "id"),)
