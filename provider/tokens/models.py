"""Login sessions (one per sign-in), their rotating refresh tokens, the access-token denylist.

A session is the refresh family of RFC 9700 §4.14.2 and the ``sid`` of every access
token issued in it: revoking it is one row update, which every check reads. Only
digests of refresh tokens are stored.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class LoginSession(Base):
    __tablename__ = "login_sessions"
    __table_args__ = (
        # The purge's way to revoked sessions. Partial on purpose: a full index on
        # revoked_at offers the planner `revoked_at IS NULL`, which every live session
        # matches; with stale statistics PostgreSQL then bitmap-scanned all sessions for
        # each refresh (14 ms instead of 0.3 ms; tests/tokens/test_query_plans.py).
        Index("ix_login_sessions_revoked_at", "revoked_at",
              postgresql_where=text("revoked_at IS NOT NULL"),
              sqlite_where=text("revoked_at IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    # The scope consented at sign-in; each refresh grants at most this, narrowed by what
    # the client and the user may have at that moment.
    scope: Mapped[str] = mapped_column(Text)
    # Authentication methods (RFC 8176) and instant of the sign-in, for ID tokens.
    amr: Mapped[list[str]] = mapped_column(JSON)
    auth_time: Mapped[datetime]
    created_at: Mapped[datetime]
    # Absolute end of the session: rotation never extends it. Indexed for the purge
    # (provider.purge), like revoked_at.
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # users.session_epoch when the user signed in: ending all of a user's sessions bumps
    # the user's epoch, which also ends a sign-in that was still in flight.
    session_epoch: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[datetime | None]


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"
    # Room on each page for the rotation's UPDATE of rotated_at, so that it is a HOT
    # update (no index entries) rather than a new row version in all four indexes.
    __table_args__ = {"postgresql_with": {"fillfactor": 90}}  # noqa: RUF012

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    issued_at: Mapped[datetime]
    # Idle expiry: each rotation slides it forward, never past the session's expiry.
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]


class RevokedAccessToken(Base):
    """Access tokens revoked before expiry (RFC 7009 §2); rows die with the token."""

    __tablename__ = "revoked_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuthorizationCode(Base):
    """An authorization code (RFC 6749 §4.1.2): single use, short-lived, stored only as a
    digest, bound to everything the token request must match and the login it proves."""

    __tablename__ = "authorization_codes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # SHA-256 of 256 random bits.
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    # Whether the authorization request named redirect_uri (then the token request must
    # repeat it, RFC 6749 §4.1.3).
    redirect_uri_sent: Mapped[bool] = mapped_column(Boolean)
    # The PKCE S256 challenge (RFC 7636 §4.2): 43 base64url characters.
    code_challenge: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(Text)
    # The login the code proves (OIDC auth_time, RFC 8176 amr) and the user's epoch then:
    # a password change or reset in between kills the code.
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]] = mapped_column(JSON)
    session_epoch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]
    # The session the code's one use started: revoked when the code comes back (§4.1.2).
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
