"""Audit events: one row per security-relevant action, kept for PROVIDER_AUDIT_RETENTION.

No foreign keys on purpose: an event outlives the client or user it names, and writing
one must never wait on (or fail because of) another table's rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from provider.db import Base


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    occurred_at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    # Who acted: a user id, a client id (OAuth endpoints), "cli" or "system".
    actor: Mapped[str] = mapped_column(String(64))
    # The user the action was about, when there is one.
    subject_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    client_id: Mapped[str | None] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    # Names of fields and fixed vocabulary (grant type, reason, key id), never a value.
    details: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        # The admin list (newest first) and the retention purge.
        Index("ix_audit_events_occurred_at_id", "occurred_at", "id"),
        # The admin list filtered by user or by type.
        Index("ix_audit_events_subject_user_id_occurred_at", "subject_user_id", "occurred_at"),
        Index("ix_audit_events_type_occurred_at", "type", "occurred_at"),
    )
