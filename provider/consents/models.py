"""The consents table: one row per (user, client, scope) the user agreed to.

One row per scope makes a later, wider consent a plain insert of the new scopes (no
read-modify-write that parallel consents could lose), and withdrawal one delete.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class Consent(Base):
    __tablename__ = "consents"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), primary_key=True,
        index=True,
    )
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted_at: Mapped[datetime]
