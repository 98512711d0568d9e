"""MFA tables: one TOTP authenticator per user, its recovery codes, and mfa_tokens.

Nothing secret is stored in clear: the TOTP secret is encrypted (Fernet, keyed from the
server secret), recovery codes and mfa_tokens exist only as digests.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class TotpAuthenticator(Base):
    """A user's TOTP secret: pending until confirmed with a code, then active.

    One row per user: enrolling again replaces a pending secret in place, and an active
    one cannot be replaced (409) until it is removed.
    """

    __tablename__ = "totp_authenticators"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # Fernet token (AES-128-CBC + HMAC-SHA256) of the base32 secret.
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    # None while pending; the instant the first code confirmed it.
    confirmed_at: Mapped[datetime | None]
    # The replay guard (RFC 6238 §5.2): the newest 30 s step whose code was accepted. A
    # code is accepted only for a later step, by one conditional UPDATE.
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Wrong codes in a row at sign-in (NIST SP 800-63B §3.2.2): each check takes a place
    # here before it runs (``failures < limit``), a right code sets it back to 0; at the
    # limit no code is checked until the authenticator is removed.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RecoveryCode(Base):
    """One single-use recovery code (a look-up secret, NIST SP 800-63B §3.1.2)."""

    __tablename__ = "recovery_codes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE")
    )
    # HMAC-SHA256 under a key derived from the server secret (provider.mfa.recovery).
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    __table_args__ = (
        # A submitted code is looked up (and used) by user and digest in one statement.
        Index("ix_recovery_codes_user_id_code_hash", "user_id", "code_hash", unique=True),
    )


class MfaToken(Base):
    """The ``mfa_token`` of a 403 ``mfa_required`` answer: proof that the password was
    right, bound to the user, the client and the scope, single use, few attempts."""

    __tablename__ = "mfa_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # SHA-256 of 256 random bits.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    # The scope granted at the password step; the second step issues exactly this.
    scope: Mapped[str] = mapped_column(Text)
    # users.session_epoch when the password was checked: a password reset or change in
    # between kills the token, like any sign-in in flight.
    session_epoch: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # Submissions so far, each reserved before its code is checked (at most 5).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    used_at: Mapped[datetime | None]
