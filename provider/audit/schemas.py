"""Wire format of the audit trail (admin API)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    occurred_at: datetime
    type: str
    outcome: str
    actor: str
    subject_user_id: uuid.UUID | None
    client_id: str | None
    address: str | None
    user_agent: str | None
    details: dict[str, Any]


class AuditEventPage(BaseModel):
    """One page of events, newest first; pass ``next_cursor`` back as ``cursor`` for more."""

    items: list[AuditEventRead]
    next_cursor: str | None
