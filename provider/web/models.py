"""Browser sessions: the signed-in state behind the login page's cookie (single sign-on).

Only a digest of the cookie's value is stored. A session is live while it has not been
ended (logout, a new login in the same browser), its absolute lifetime has not passed,
and its user is active in the same session epoch as at login (a password change or
reset, disabling or deletion moves the epoch on: every browser session ends with it).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class BrowserSession(Base):
    __tablename__ = "browser_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # SHA-256 of the cookie's 256 random bits.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    session_epoch: Mapped[int] = mapped_column(Integer)
    # The login: when, and how (RFC 8176), for the ID tokens of the codes it approves.
    auth_time: Mapped[datetime]
    amr: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]
