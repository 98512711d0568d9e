"""Refresh-token families and the access-token denylist.

A family is every refresh token descended from one login. Only digests are stored.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    # Idle expiry: each rotation slides it forward, never past family_expires_at.
    expires_at: Mapped[datetime]
    # Absolute expiry of the whole family (login time + absolute TTL).
    family_expires_at: Mapped[datetime]
    auth_time: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_refresh_tokens_parent_id", "parent_id"),)


class RevokedAccessToken(Base):
    """Access tokens revoked before expiry (RFC 7009 §2); rows die with the token."""

    __tablename__ = "revoked_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
