"""Reading the audit trail in tests, and checking that it holds no value it must not."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import or_, select

from provider.audit.models import AuditEvent
from provider.services import Services

COLUMNS = ("type", "outcome", "actor", "subject_user_id", "client_id", "address",
           "user_agent", "details")


async def events(services: Services, *, user_id: str | None = None,
                 client_id: str | None = None) -> list[dict[str, Any]]:
    """Every event about ``user_id`` or of ``client_id``, oldest first, queue written."""
    await services.audit.flush()
    conditions = []
    if user_id is not None:
        conditions.append(AuditEvent.subject_user_id == uuid.UUID(user_id))
    if client_id is not None:
        conditions.append(AuditEvent.client_id == client_id)
    async with services.sessions() as session:
        rows = (await session.scalars(
            select(AuditEvent).where(or_(*conditions))
            .order_by(AuditEvent.occurred_at, AuditEvent.id))).all()
    return [as_dict(row) for row in rows]


def as_dict(row: AuditEvent) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in COLUMNS}
    if values["subject_user_id"] is not None:
        values["subject_user_id"] = str(values["subject_user_id"])
    return values


def assert_holds_none_of(found: list[dict[str, Any]], *secrets: str | None) -> None:
    """No event, in any column, carries any of these values (passwords, tokens, emails,
    codes, client secrets), also not lower-cased."""
    text = json.dumps(found, default=str)
    for secret in secrets:
        if secret:
            assert secret not in text and secret.lower() not in text.lower(), secret
