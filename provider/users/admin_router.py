"""Admin API for users (scope `admin` of an admin user). Never returns a hash or secret.

A user id that is not a UUID answers 404 ``user_not_found``, like an unknown one.
Every change is logged at INFO on ``provider.admin`` (admin id, action, target id) and
written to the audit trail in the change's own transaction.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Response

from provider.audit.service import EventType
from provider.deps import (
    AccountsDep,
    AdminUser,
    AdminWriter,
    ClockDep,
    RequestContextDep,
    ServicesDep,
    SessionDep,
)
from provider.mail import templates as mail
from provider.responses import (
    ADMIN_BEARER_ERRORS,
    INVALID,
    USER_CONFLICT,
    USER_NOT_FOUND,
    USER_TAKEN,
)
from provider.users.accounts import PRODUCT, email_hint
from provider.users.admin_schemas import AdminUserCreate, AdminUserUpdate, UserPage
from provider.users.router import mailbox_for
from provider.users.schemas import UserRead
from provider.users.service import (
    create_user,
    disable_user,
    get_user,
    list_users,
    parse_user_id,
    update_user_admin,
)

router = APIRouter(prefix="/admin", tags=["admin"])
audit = logging.getLogger("provider.admin")


def target_user_id(
    user_id: Annotated[str, Path(description="The user's id (a UUID)")],
) -> uuid.UUID:
    return parse_user_id(user_id)


# Routes list AdminUser before it: dependencies resolve in order, so an anonymous caller
# gets 401 whatever the id.
TargetUserId = Annotated[uuid.UUID, Depends(target_user_id)]


@router.get("/users", response_model=UserPage, responses={**ADMIN_BEARER_ERRORS, **INVALID})
async def admin_list_users(
    admin: AdminUser,
    session: SessionDep,
    email: Annotated[str | None, Query(
        max_length=320, description="Case-insensitive prefix of the email address")] = None,
    cursor: Annotated[str | None, Query(
        max_length=512, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> UserPage:
    """Users oldest first (created_at, id), a page at a time."""
    users, next_cursor = await list_users(
        session, email_prefix=email, cursor=cursor, limit=limit
    )
    return UserPage(items=[UserRead.model_validate(u) for u in users], next_cursor=next_cursor)


@router.post("/users", status_code=201, response_model=UserRead,
             responses={**ADMIN_BEARER_ERRORS, **USER_TAKEN, **INVALID})
async def admin_create_user(
    admin: AdminWriter, body: AdminUserCreate, session: SessionDep, services: ServicesDep,
    clock: ClockDep, context: RequestContextDep,
) -> UserRead:
    """Create an active user; the password must meet the same policy as at registration."""
    user = await create_user(
        session, services.hasher, email=body.email, password=body.password,
        min_password_length=services.settings.password_min_length, now=clock.now(),
        username=body.username, profile=body.profile, is_admin=body.is_admin,
        is_verified=body.is_verified,
    )
    audit.info("admin=%s action=user.create target=%s", admin.id, user.id)
    services.audit.add(session, EventType.USER_CREATED, actor=str(admin.id),
                       subject_user_id=user.id, context=context,
                       details={"fields": sorted(body.model_fields_set - {"password"})})
    return UserRead.model_validate(user)


@router.get("/users/{user_id}", response_model=UserRead,
            responses={**ADMIN_BEARER_ERRORS, **USER_NOT_FOUND, **INVALID})
async def admin_read_user(admin: AdminUser, user_id: TargetUserId, session: SessionDep,
                          ) -> UserRead:
    return UserRead.model_validate(await get_user(session, user_id))


@router.patch("/users/{user_id}", response_model=UserRead,
              responses={**ADMIN_BEARER_ERRORS, **USER_NOT_FOUND, **USER_CONFLICT, **INVALID})
async def admin_update_user(
    admin: AdminWriter, user_id: TargetUserId, body: AdminUserUpdate, session: SessionDep,
    clock: ClockDep, services: ServicesDep, context: RequestContextDep,
    background: BackgroundTasks, accounts: AccountsDep,
) -> UserRead:
    """Change only the fields sent. A new email is told to the old address.
    ``is_active: false`` also revokes the user's refresh tokens; an admin cannot disable
    or demote their own account (409 cannot_modify_self)."""
    changes = body.model_dump(exclude_unset=True)
    old_email = (await get_user(session, user_id)).email
    user = await update_user_admin(session, user_id, changes, actor_id=admin.id, now=clock.now())
    if user.email != old_email:
        # The old address hears of it (OWASP: an email change notifies the old one).
        mailbox_for(background, accounts).send(mail.email_changed_by_admin(
            old_email, new_email_hint=email_hint(user.email), product=PRODUCT))
    audit.info("admin=%s action=user.update target=%s fields=%s", admin.id, user.id,
               ",".join(sorted(changes)))
    services.audit.add(session, EventType.USER_UPDATED, actor=str(admin.id),
                       subject_user_id=user.id, context=context,
                       details={"fields": sorted(changes)})
    return UserRead.model_validate(user)


@router.delete("/users/{user_id}", status_code=204, response_model=None,
               responses={**ADMIN_BEARER_ERRORS, **USER_NOT_FOUND, **USER_CONFLICT, **INVALID})
async def admin_disable_user(
    admin: AdminWriter, user_id: TargetUserId, session: SessionDep, clock: ClockDep,
    services: ServicesDep, context: RequestContextDep,
) -> Response:
    """Disable the account (it is kept, not erased) and revoke its tokens. Idempotent."""
    await disable_user(session, user_id, actor_id=admin.id, now=clock.now())
    audit.info("admin=%s action=user.disable target=%s", admin.id, user_id)
    services.audit.add(session, EventType.USER_DISABLED, actor=str(admin.id),
                       subject_user_id=user_id, context=context)
    return Response(status_code=204)
