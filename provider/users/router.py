"""Self-service account endpoints: registration, email codes, password and profile."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, BackgroundTasks, Request, Response

from provider.audit.service import EventType
from provider.deps import (
    AccountsDep,
    AccountUser,
    ClaimsDep,
    RequestContextDep,
    ServicesDep,
    SessionDep,
    client_address,
    hold_account,
)
from provider.responses import BEARER_ERRORS, bearer_problems, problems
from provider.users.accounts import Mailbox, WrongPassword
from provider.users.schemas import (
    Accepted,
    ChangePassword,
    ConfirmEmail,
    DeleteAccount,
    Done,
    EmailOnly,
    Register,
    ResetPassword,
    UserRead,
    UserUpdate,
    UserUpdated,
    VerifyEmail,
)
from provider.users.service import lock_active_admins

router = APIRouter(tags=["accounts"])


def mailbox_for(background: BackgroundTasks, accounts: AccountsDep) -> Mailbox:
    """Mail and per-address work run after the response: same time for everyone."""
    mailbox = Mailbox()
    background.add_task(accounts.deliver, mailbox)
    return mailbox


ACCEPTED = "If the address can receive it, a message is on its way."


@router.post("/auth/register", status_code=202, response_model=Accepted,
             responses=problems(403, 409, 422, 429, 503))
async def register(body: Register, request: Request, background: BackgroundTasks,
                   services: ServicesDep, accounts: AccountsDep,
                   session: SessionDep) -> Accepted:
    await accounts.register(
        session, mailbox_for(background, accounts), email=body.email,
        password=body.password, username=body.username, profile=dict(body.profile),
        client_address=client_address(request, services.settings),
    )
    return Accepted(detail=ACCEPTED + " Confirm your address with the code it contains.")


@router.post("/auth/verify-email/request", status_code=202, response_model=Accepted,
             responses=problems(422))
async def request_verification(body: EmailOnly, background: BackgroundTasks,
                               accounts: AccountsDep) -> Accepted:
    accounts.request_verification(mailbox_for(background, accounts), email=body.email)
    return Accepted(detail=ACCEPTED)


@router.post("/auth/verify-email", response_model=Done,
             responses=problems(400, 422, 429, 503))
async def verify_email(body: VerifyEmail, request: Request, services: ServicesDep,
                       accounts: AccountsDep, session: SessionDep) -> Done:
    await accounts.verify_email(session, email=body.email, code=body.code,
                                client_address=client_address(request, services.settings))
    return Done(status="verified")


@router.post("/auth/forgot-password", status_code=202, response_model=Accepted,
             responses=problems(422))
async def forgot_password(body: EmailOnly, background: BackgroundTasks,
                          accounts: AccountsDep) -> Accepted:
    accounts.forgot_password(mailbox_for(background, accounts), email=body.email)
    return Accepted(detail=ACCEPTED)


@router.post("/auth/reset-password", response_model=Done,
             responses=problems(400, 422, 429, 503))
async def reset_password(body: ResetPassword, background: BackgroundTasks,
                         accounts: AccountsDep, session: SessionDep, services: ServicesDep,
                         context: RequestContextDep) -> Done:
    user_id = await accounts.reset_password(session, mailbox_for(background, accounts),
                                            email=body.email, code=body.code,
                                            new_password=body.new_password,
                                            client_address=context.address or "unknown")
    # In the request's transaction: kept exactly when the new password is.
    services.audit.add(session, EventType.PASSWORD_RESET, actor=str(user_id),
                       subject_user_id=user_id, context=context)
    return Done(status="password_reset")


@router.get("/users/me", response_model=UserRead, responses=BEARER_ERRORS)
async def read_me(user: AccountUser) -> UserRead:
    return UserRead.model_validate(user)


@router.patch("/users/me", response_model=UserUpdated,
              responses=bearer_problems(400, 409, 422, 429, 503))
async def update_me(body: UserUpdate, user: AccountUser, claims: ClaimsDep,
                    background: BackgroundTasks, accounts: AccountsDep, session: SessionDep,
                    services: ServicesDep, context: RequestContextDep) -> UserUpdated:
    await hold_account(session, user)
    fields = body.model_fields_set
    mailbox = mailbox_for(background, accounts)
    pending = None
    # All of it or none: a refused part (a taken username after the password was
    # re-entered) rolls back the others, though the answer's transaction commits; the
    # email's code is mailed only after an answer of success.
    async with session.begin_nested():
        if "email" in fields and body.email is not None:
            if not body.password:
                raise WrongPassword("Changing the email address requires your password.")
            pending = await accounts.request_email_change(
                mailbox, user, new_email=body.email, password=body.password)
            services.audit.add(session, EventType.EMAIL_CHANGE_REQUESTED, actor=str(user.id),
                               subject_user_id=user.id, client_id=claims.client_id,
                               context=context)
        if "username" in fields or "profile" in fields:
            await accounts.update_profile(
                session, user, username=body.username, set_username="username" in fields,
                profile=dict(body.profile) if body.profile is not None else None)
    return UserUpdated(**UserRead.model_validate(user).model_dump(), pending_email=pending)


@router.post("/users/me/email/confirm", response_model=UserRead,
             responses=bearer_problems(400, 409, 422, 429, 503))
async def confirm_email(body: ConfirmEmail, user: AccountUser, claims: ClaimsDep,
                        background: BackgroundTasks, accounts: AccountsDep,
                        session: SessionDep, services: ServicesDep,
                        context: RequestContextDep) -> UserRead:
    await hold_account(session, user)
    await accounts.confirm_email_change(session, mailbox_for(background, accounts),
                                        user, code=body.code,
                                        client_address=context.address or "unknown")
    services.audit.add(session, EventType.EMAIL_CHANGED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context)
    return UserRead.model_validate(user)


@router.post("/users/me/password", status_code=204, response_class=Response,
             responses=bearer_problems(400, 422, 429, 503))
async def change_password(body: ChangePassword, user: AccountUser, claims: ClaimsDep,
                          background: BackgroundTasks, accounts: AccountsDep,
                          session: SessionDep, services: ServicesDep,
                          context: RequestContextDep) -> Response:
    await hold_account(session, user)
    await accounts.change_password(
        session, mailbox_for(background, accounts), user,
        current_password=body.current_password, new_password=body.new_password,
        keep_session=uuid.UUID(claims.sid) if claims.sid else None)
    services.audit.add(session, EventType.PASSWORD_CHANGED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context)
    return Response(status_code=204)


@router.delete("/users/me", status_code=204, response_class=Response,
               responses=bearer_problems(400, 422, 429, 503))
async def delete_me(body: DeleteAccount, user: AccountUser, claims: ClaimsDep,
                    background: BackgroundTasks, accounts: AccountsDep, session: SessionDep,
                    services: ServicesDep, context: RequestContextDep) -> Response:
    if user.is_admin:
        # Every active admin's row in id order first, its own among them, as the admin
        # API takes them: two admins deleting themselves at once queue, never deadlock.
        # (The count comes after the password, in delete_account.)
        await lock_active_admins(session)
    await hold_account(session, user)  # a revocation that answered first wins
    await accounts.delete_account(session, mailbox_for(background, accounts), user,
                                  password=body.password)
    services.audit.add(session, EventType.ACCOUNT_DELETED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context)
    return Response(status_code=204)
