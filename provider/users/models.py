"""The users table."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


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
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # When all the user's sessions were last ended (password reset or change, disabling):
    # access tokens without a refresh family that are older than this stop working.
    sessions_revoked_at: Mapped[datetime | None]

    # The admin list pages through users in (created_at, id) order.
    __table_args__ = (Index("ix_users_created_at_id", "created_at", "id"),)
