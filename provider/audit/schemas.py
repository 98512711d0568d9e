"""Wire format of the audit trail (admin API)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        raise ValueError("the instant has no UTC equivalent") from None


# A filter's bound: an instant with its UTC offset, as UTC.
Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


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
