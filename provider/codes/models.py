"""One-time email codes: one live code per user and purpose."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class EmailCode(Base):
    """The current code of one (user, purpose); a resend replaces the code in place: the
    old code dies and the new one starts with its own tries (``failed_attempts`` counts
    wrong tries of this code only; the account-wide count lives in the throttles)."""

    __tablename__ = "email_codes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE")
    )
    purpose: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA256 under the server secret: six digits alone would fall to brute force.
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # For a change of email: the address the code was sent to, applied on success.
    target_email: Mapped[str | None] = mapped_column(String(320))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("user_id", "purpose"),)
