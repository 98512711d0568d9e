"""GET /admin/audit-events: the audit trail, newest first (scope `admin` of an admin)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from provider.audit.schemas import AuditEventPage, AuditEventRead, Instant
from provider.audit.service import EventType, list_events
from provider.deps import AdminUser, ServicesDep, SessionDep
from provider.responses import ADMIN_BEARER_ERRORS, INVALID

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/audit-events", response_model=AuditEventPage,
            responses={**ADMIN_BEARER_ERRORS, **INVALID})
async def admin_list_audit_events(
    admin: AdminUser,
    session: SessionDep,
    services: ServicesDep,
    user_id: Annotated[uuid.UUID | None, Query(
        description="Only events about this user (subject_user_id)")] = None,
    type: Annotated[EventType | None, Query(description="Only events of this type")] = None,
    since: Annotated[Instant | None, Query(
        description="From this instant on (inclusive; ISO 8601 with a UTC offset)")] = None,
    until: Annotated[Instant | None, Query(
        description="Before this instant (exclusive; ISO 8601 with a UTC offset)")] = None,
    cursor: Annotated[str | None, Query(
        max_length=512, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> AuditEventPage:
    """Events newest first (occurred_at, id), a page at a time. Events of the token path
    reach the table within about a second; this process's own are written first."""
    await services.audit.flush()
    events, next_cursor = await list_events(
        session, user_id=user_id, event_type=type, since=since, until=until,
        cursor=cursor, limit=limit,
    )
    return AuditEventPage(items=[AuditEventRead.model_validate(e) for e in events],
                          next_cursor=next_cursor)
