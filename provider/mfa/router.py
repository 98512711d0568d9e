"""MFA endpoints: the signed-in user's TOTP and recovery codes, and the admin's reset.

Every change is written to the audit trail in its own transaction and mailed to the user
after it commits (NIST SP 800-63B §4.6: notify on binding and recovery events).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, BackgroundTasks, Response

from provider.audit.service import EventType
from provider.codes.service import InvalidCode
from provider.deps import (
    AccountsDep,
    AccountUser,
    AdminWriter,
    ClaimsDep,
    RequestContextDep,
    ServicesDep,
    SessionDep,
    hold_account,
    require_recent_sign_in,
)
from provider.errors import Conflict, TooManyRequests
from provider.mail import templates as mail
from provider.mfa.schemas import DisableTotp, RecoveryCodes, TotpCode, TotpEnrolment
from provider.mfa.service import (
    CheckThrottled,
    Factor,
    MfaAlreadyEnabled,
    NoPendingEnrolment,
    WrongCode,
)
from provider.responses import (
    ADMIN_BEARER_ERRORS,
    INVALID,
    RECENT_SIGN_IN_ERRORS,
    USER_NOT_FOUND,
    bearer_problems,
    problems,
)
from provider.tokens.revocation import end_user_sessions
from provider.users.accounts import PRODUCT
from provider.users.admin_router import TargetUserId
from provider.users.router import mailbox_for
from provider.users.service import get_user

router = APIRouter(tags=["accounts"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])
admin_log = logging.getLogger("provider.admin")


class MfaAlreadyEnabledError(Conflict):
    code = "mfa_already_enabled"
    title = "Two-step verification is already on; turn it off before enrolling again."


class MfaNotPending(Conflict):
    code = "mfa_not_pending"
    title = "There is no pending TOTP enrolment to confirm; start one first."


class MfaNotEnabled(Conflict):
    code = "mfa_not_enabled"
    title = "Two-step verification is not on for this account."


@contextmanager
def _answers() -> Iterator[None]:
    """The MFA service's domain errors as API problems."""
    try:
        yield
    except MfaAlreadyEnabled:
        raise MfaAlreadyEnabledError() from None
    except NoPendingEnrolment:
        raise MfaNotPending() from None
    except WrongCode:
        # One answer for wrong, replayed, used and other-factor codes.
        raise InvalidCode() from None
    except CheckThrottled as exc:
        raise TooManyRequests(exc.retry_after) from None


@router.post("/users/me/mfa/totp", response_model=TotpEnrolment,
             responses={**RECENT_SIGN_IN_ERRORS, **problems(409, 503)})
async def start_totp_enrolment(user: AccountUser, claims: ClaimsDep, session: SessionDep,
                               services: ServicesDep) -> TotpEnrolment:
    """Start (or restart) TOTP enrolment: a new pending secret, its otpauth URI and QR
    code. Nothing changes at sign-in until it is confirmed with a code. Needs a recent
    sign-in (``PROVIDER_REAUTH_MAX_AGE``, 5 minutes): an older token gets 401
    ``insufficient_user_authentication`` with ``max_age`` (RFC 9470); sign in again."""
    if user.mfa_enabled:  # no sign-in asked for in vain
        raise MfaAlreadyEnabledError()
    require_recent_sign_in(claims, services)
    await hold_account(session, user)
    with _answers():
        enrolment = await services.mfa.start_enrolment(
            await session.connection(), user_id=user.id, email=user.email,
            now=services.clock.now())
    return TotpEnrolment(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri,
                         qr_svg=enrolment.qr_svg)


@router.post("/users/me/mfa/totp/confirm", response_model=RecoveryCodes,
             responses=bearer_problems(400, 409, 422, 429, 503))
async def confirm_totp(body: TotpCode, user: AccountUser, claims: ClaimsDep,
                       background: BackgroundTasks, accounts: AccountsDep,
                       session: SessionDep, services: ServicesDep,
                       context: RequestContextDep) -> RecoveryCodes:
    """Turn two-step verification on with a code from the app; answers the recovery
    codes, shown this once. Every other session of the user ends (signed in with the
    password alone, whoever holds them); the caller's stays."""
    await hold_account(session, user)
    now = services.clock.now()
    conn = await session.connection()
    with _answers():
        codes = await services.mfa.confirm(conn, user_id=user.id, code=body.code, now=now)
    # ASVS 7.4.3: a new factor ends the other sessions, as a removed one does.
    await end_user_sessions(conn, user.id, now=now,
                            keep=uuid.UUID(claims.sid) if claims.sid else None)
    services.audit.add(session, EventType.MFA_ENABLED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context)
    mailbox_for(background, accounts).send(mail.mfa_changed(user.email, enabled=True,
                                                            product=PRODUCT))
    return RecoveryCodes(recovery_codes=codes)


@router.post("/users/me/mfa/recovery-codes", response_model=RecoveryCodes,
             responses=bearer_problems(400, 409, 422, 429, 503))
async def regenerate_recovery_codes(body: TotpCode, user: AccountUser, claims: ClaimsDep,
                                    background: BackgroundTasks, accounts: AccountsDep,
                                    session: SessionDep, services: ServicesDep,
                                    context: RequestContextDep) -> RecoveryCodes:
    """A new set of recovery codes for a current TOTP code; the old set stops working."""
    if not user.mfa_enabled:
        raise MfaNotEnabled()
    await hold_account(session, user)
    with _answers():
        codes = await services.mfa.regenerate_recovery_codes(
            await session.connection(), user_id=user.id, code=body.code,
            now=services.clock.now())
    services.audit.add(session, EventType.MFA_RECOVERY_CODES_REGENERATED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context)
    mailbox_for(background, accounts).send(mail.recovery_codes_regenerated(
        user.email, product=PRODUCT))
    return RecoveryCodes(recovery_codes=codes)


@router.delete("/users/me/mfa/totp", status_code=204, response_class=Response,
               responses=bearer_problems(400, 409, 422, 429, 503))
async def disable_totp(body: DisableTotp, user: AccountUser, claims: ClaimsDep,
                       background: BackgroundTasks, accounts: AccountsDep,
                       session: SessionDep, services: ServicesDep,
                       context: RequestContextDep) -> Response:
    """Turn two-step verification off with a current TOTP code, or with the password and
    a recovery code. Every other session of the user ends; the caller's stays."""
    if not user.mfa_enabled:
        raise MfaNotEnabled()
    await hold_account(session, user)
    if body.code is not None:
        factor, code = Factor.TOTP, body.code
    else:
        assert body.password is not None and body.recovery_code is not None  # noqa: S101
        await accounts.check_password(user, body.password)
        factor, code = Factor.RECOVERY_CODE, body.recovery_code
    now = services.clock.now()
    conn = await session.connection()
    with _answers():
        await services.mfa.disable(conn, user_id=user.id, code=code, factor=factor, now=now)
    # ASVS 7.4.3: a removed factor ends the other sessions.
    await end_user_sessions(conn, user.id, now=now,
                            keep=uuid.UUID(claims.sid) if claims.sid else None)
    services.audit.add(session, EventType.MFA_DISABLED, actor=str(user.id),
                       subject_user_id=user.id, client_id=claims.client_id, context=context,
                       details={"method": factor.value})
    mailbox_for(background, accounts).send(mail.mfa_changed(user.email, enabled=False,
                                                            product=PRODUCT))
    return Response(status_code=204)


@admin_router.delete("/users/{user_id}/mfa", status_code=204, response_class=Response,
                     responses={**ADMIN_BEARER_ERRORS, **USER_NOT_FOUND, **INVALID})
async def admin_reset_mfa(admin: AdminWriter, user_id: TargetUserId, session: SessionDep,
                          background: BackgroundTasks, accounts: AccountsDep,
                          services: ServicesDep, context: RequestContextDep) -> Response:
    """Remove a user's TOTP and recovery codes (e.g. a lost phone). The user is emailed
    and every session of theirs ends. Idempotent: 204 also when there was none."""
    user = await get_user(session, user_id)
    conn = await session.connection()
    was_enabled = await services.mfa.remove(conn, user_id=user.id)
    if was_enabled:
        await end_user_sessions(conn, user.id, now=services.clock.now())
        mailbox_for(background, accounts).send(mail.mfa_reset(user.email, product=PRODUCT))
    admin_log.info("admin=%s action=user.mfa_reset target=%s", admin.id, user.id)
    services.audit.add(session, EventType.MFA_RESET, actor=str(admin.id),
                       subject_user_id=user.id, context=context,
                       details={"mfa_enabled": was_enabled})
    return Response(status_code=204)
