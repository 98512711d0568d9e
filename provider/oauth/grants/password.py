"""RFC 6749 §4.3: resource owner password credentials, for first-party clients only.

Unknown user, wrong password and disabled account give one answer in about the same
time: the password is verified against a dummy hash when there is no user. A user with
TOTP gets tokens only with a second factor: ``otp`` in the same request, or 403
``mfa_required`` with an ``mfa_token`` to finish with (provider.oauth.grants.mfa_otp).
That answer comes only after the right password: a wrong one is ``invalid_grant`` as
always, through the same throttles.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, NoReturn, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.audit.service import EventType, RequestContext
from provider.audit.service import Outcome as AuditOutcome
from provider.clients.service import ClientInfo
from provider.mail import Message
from provider.mail import templates as mail
from provider.metrics import LOGIN_FAILURES
from provider.mfa.service import (
    AMR,
    PASSWORD_AMR,
    CheckThrottled,
    Factor,
    SecondFactorLocked,
    WrongCode,
)
from provider.oauth.errors import InvalidGrant, MfaRequired, SlowDown, UnauthorizedClient
from provider.oauth.grants.base import TokenRequest, TokenResponse, require, token_response
from provider.oauth.scopes import parse_scope, resolve_scope
from provider.passwords import MAX_PASSWORD_LENGTH
from provider.ratelimit import Throttled
from provider.tokens.refresh import (
    Session,
    issue_refresh_token,
    new_session,
    start_session,
    start_session_at_once,
)
from provider.users.accounts import PRODUCT, Mailbox
from provider.users.models import User
from provider.users.service import (
    LoginCandidate,
    Rehash,
    find_login_candidate,
    store_rehash,
)

if TYPE_CHECKING:
    from provider.services import Services

users = cast(Table, User.__table__)

BAD_CREDENTIALS = "Invalid username or password."
UNVERIFIED = "The email address has not been verified yet."
WRONG_CODE = "The one-time code is wrong or was already used."
LOCKED = ("Two-step verification is locked after too many wrong codes in a row; an "
          "administrator must reset it.")


class PasswordGrant:
    grant_type: ClassVar[str] = "password"
    allows_public_clients: ClassVar[bool] = True

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        if not client.is_first_party:
            # Registration refuses it (provider.clients.service.check_first_party); this
            # holds for any row that got past it.
            raise UnauthorizedClient("The password grant is for first-party clients only.")
        form = request.form
        username = require(form, "username")
        password = require(form, "password")
        requested = parse_scope(form.get("scope"))
        user, rehash = await check_credentials(
            services, username=username, password=password, client_id=client.client_id,
            context=request.context)

        scope = resolve_scope(requested, client.scopes, may_admin=user.is_admin)
        now = services.clock.now()
        if user.has_mfa:
            otp = form.get("otp")
            if otp is None:
                async with services.engine.begin() as conn:
                    if rehash is not None:
                        await store_rehash(conn, rehash, now=now)
                    mfa_token = await services.mfa.issue_token(
                        conn, user_id=user.id, client_id=client.client_id, scope=scope,
                        session_epoch=user.session_epoch, now=now)
                services.audit.record(EventType.MFA_REQUIRED, actor=client.client_id,
                                      client_id=client.client_id, subject_user_id=user.id,
                                      context=request.context)
                raise MfaRequired(mfa_token)
            return await self._with_second_factor(
                services, request, client, user_id=user.id, scope=scope,
                session_epoch=user.session_epoch, otp=otp, rehash=rehash)

        # Every sign-in is a session, refresh token or not: it is the `sid` that lets a
        # revocation reach the access token. The epoch was read with the password.
        if rehash is None and services.single is not services.engine:
            # The common case on PostgreSQL: the session and its token in one statement.
            session = new_session(
                user_id=user.id, client_id=client.client_id, scope=scope, amr=PASSWORD_AMR,
                now=now, absolute_ttl=services.settings.refresh_token_absolute_ttl)
            refresh_token = await start_session_at_once(
                services.single, session, session_epoch=user.session_epoch, now=now,
                idle_ttl=_refresh_idle_ttl(services, client))
        else:
            async with services.engine.begin() as conn:
                if rehash is not None:
                    await store_rehash(conn, rehash, now=now)
                session, refresh_token = await start_sign_in(
                    services, conn, client, user_id=user.id, scope=scope,
                    session_epoch=user.session_epoch, amr=PASSWORD_AMR)
        return signed_in(services, request, client, session, refresh_token, factor=None)

    async def _with_second_factor(
        self, services: Services, request: TokenRequest, client: ClientInfo, *,
        user_id: uuid.UUID, scope: str, session_epoch: int, otp: str, rehash: Rehash | None,
    ) -> TokenResponse:
        """The password grant with ``otp``: the code is checked and the session started
        in one transaction; the per-user slot is reserved before the check."""
        mfa = services.mfa
        try:
            locks = await mfa.reserve(user_id)
        except CheckThrottled as exc:
            raise SlowDown(exc.retry_after) from None
        except SecondFactorLocked:
            second_factor_refused(services, request, client, user_id)
        now = services.clock.now()
        try:
            async with services.engine.begin() as conn:
                if rehash is not None:
                    await store_rehash(conn, rehash, now=now)
                factor = await mfa.check(conn, user_id=user_id, code=otp, now=now)
                if factor is None:
                    raise WrongCode()
                session, refresh_token = await start_sign_in(
                    services, conn, client, user_id=user_id, scope=scope,
                    session_epoch=session_epoch, amr=AMR[factor])
        except WrongCode:
            # The slot stays taken: a failure.
            await wrong_second_factor(services, request, client, user_id, locks=locks)
        except BaseException:
            await mfa.unchecked(user_id)  # no verdict on the code: not a wrong one
            raise
        await mfa.refund(user_id)
        await notify_second_factor(services, user_id, factor)
        return signed_in(services, request, client, session, refresh_token, factor=factor)


async def check_credentials(
    services: Services, *, username: str, password: str, client_id: str,
    context: RequestContext, method: str = "password",
) -> tuple[LoginCandidate, Rehash | None]:
    """A user's password, checked the one way every sign-in checks it (the password
    grant and the login page): the login throttles' slots reserved before the hash is
    verified, a dummy hash verified when there is no user (the same time either way),
    one answer for an unknown user, a wrong password and a disabled account. Returns
    the user and a rehash when the parameters changed (store it with ``store_rehash``,
    which keeps a change made meanwhile); raises InvalidGrant or SlowDown.
    """
    throttles = services.throttles
    address = throttles.client(context.address or "unknown")
    # The slots are taken before the hash is verified: N parallel guesses count like
    # N sequential ones. A failure keeps its slots; a success gives them back.
    try:
        await throttles.reserve((throttles.login_account, username),
                                (throttles.login_address, address))
    except Throttled as exc:
        raise SlowDown(exc.retry_after) from None
    if len(password) > MAX_PASSWORD_LENGTH:
        # Longer than any password we accept: refuse before hashing (DoS guard).
        _failed(services, context, client_id, None, "password_too_long", method)

    user = await find_login_candidate(services.single, username,
                                      autocommit=services.single is not services.engine)
    valid, new_hash = await services.hasher.verify(
        password, user.password_hash if user else None)
    if user is None or not valid or not user.is_active:
        reason = ("unknown_user" if user is None else
                  "wrong_password" if not valid else "inactive_user")
        _failed(services, context, client_id, user.id if user else None, reason, method)
    await throttles.login_account.clear(username)
    await throttles.login_address.refund(address)
    if services.settings.require_verified_email and not user.is_verified:
        _record_failure(services, context, client_id, user.id, "unverified_email", method)
        # Said only to someone who proved the password: it reveals nothing new.
        raise InvalidGrant(UNVERIFIED)
    if new_hash is None or user.password_hash is None:
        return user, None
    return user, Rehash(user.id, user.password_hash, new_hash)


def _failed(services: Services, context: RequestContext, client_id: str,
            user_id: uuid.UUID | None, reason: str, method: str) -> NoReturn:
    # Recorded through the queue: this request's failure writes nothing of its own.
    # The throttle slots reserved above stay taken: this was a failure.
    _record_failure(services, context, client_id, user_id, reason, method)
    LOGIN_FAILURES.inc()
    raise InvalidGrant(BAD_CREDENTIALS)


async def start_sign_in(
    services: Services, conn: AsyncConnection, client: ClientInfo, *, user_id: uuid.UUID,
    scope: str, session_epoch: int, amr: tuple[str, ...],
) -> tuple[Session, str | None]:
    """Record the sign-in's session (``amr`` and ``auth_time``, RFC 8176 / OIDC) and its
    first refresh token when the client may refresh."""
    settings = services.settings
    now = services.clock.now()
    session = new_session(user_id=user_id, client_id=client.client_id, scope=scope, amr=amr,
                          now=now, absolute_ttl=settings.refresh_token_absolute_ttl)
    await start_session(conn, session, session_epoch=session_epoch, now=now)
    refresh_token = None
    idle_ttl = _refresh_idle_ttl(services, client)
    if idle_ttl is not None:
        refresh_token = await issue_refresh_token(conn, session=session, now=now,
                                                  idle_ttl=idle_ttl)
    return session, refresh_token


def _refresh_idle_ttl(services: Services, client: ClientInfo) -> timedelta | None:
    """The first refresh token's idle lifetime, or None when the client may not refresh."""
    if "refresh_token" in client.grant_types:
        return services.settings.refresh_token_ttl
    return None


def signed_in(services: Services, request: TokenRequest, client: ClientInfo,
              session: Session, refresh_token: str | None, *,
              factor: Factor | None) -> TokenResponse:
    details = {"method": "password"}
    if factor is not None:
        details["mfa"] = factor.value
    services.audit.record(EventType.LOGIN, actor=client.client_id,
                          client_id=client.client_id, subject_user_id=session.user_id,
                          context=request.context, details=details)
    return token_response(services, request, sub=str(session.user_id),
                          client_id=client.client_id, scope=session.scope, session=session,
                          refresh_token=refresh_token)


async def wrong_second_factor(services: Services, request: TokenRequest, client: ClientInfo,
                              user_id: uuid.UUID, *, locks: bool) -> NoReturn:
    _record_failure(services, request.context, client.client_id, user_id, "wrong_otp")
    if locks:
        await second_factor_locked(services, request.context, client.client_id, user_id)
    raise InvalidGrant(WRONG_CODE)


def second_factor_refused(services: Services, request: TokenRequest, client: ClientInfo,
                          user_id: uuid.UUID) -> NoReturn:
    """The second factor is locked: no code was checked. Said only to a caller who got
    past the password (or holds an mfa_token from it)."""
    _record_failure(services, request.context, client.client_id, user_id, "mfa_locked")
    raise InvalidGrant(LOCKED)


async def notify_second_factor(services: Services, user_id: uuid.UUID,
                               factor: Factor | None) -> None:
    """After a sign-in that used a recovery code: the owner hears of it, with how many
    are left (a stranger with the password and one code would otherwise go unseen)."""
    if factor is Factor.RECOVERY_CODE:
        remaining = await services.mfa.recovery_codes_left(user_id)
        await _mail_owner(services, user_id, lambda email: mail.recovery_code_used(
            email, remaining=remaining, product=PRODUCT))


async def second_factor_locked(services: Services, context: RequestContext, client_id: str,
                               user_id: uuid.UUID) -> None:
    """The wrong code that reached PROVIDER_MFA_LOCKOUT_FAILURES in a row: its audit event,
    and a notice to the owner (NIST SP 800-63B §3.2.2), whose password someone has."""
    failures = services.settings.mfa_lockout_failures
    services.audit.record(EventType.MFA_LOCKED, actor=client_id, client_id=client_id,
                          subject_user_id=user_id, context=context,
                          details={"failures": failures})
    await _mail_owner(services, user_id, lambda email: mail.mfa_locked(
        email, failures=failures, product=PRODUCT))


async def _mail_owner(services: Services, user_id: uuid.UUID,
                      message: Callable[[str], Message]) -> None:
    """Mail the account's owner at its address now, sent after the answer."""
    async with services.single.connect() as conn:
        email = (await conn.execute(select(users.c.email).where(users.c.id == user_id))
                 ).scalar()
    if email:
        mailbox = Mailbox()
        mailbox.send(message(email))
        services.accounts.deliver_soon(mailbox)


def _record_failure(services: Services, context: RequestContext, client_id: str,
                    user_id: uuid.UUID | None, reason: str, method: str = "password") -> None:
    """A failed sign-in: the user it aimed at when known, never the name that was typed."""
    services.audit.record(EventType.LOGIN, actor=client_id,
                          outcome=AuditOutcome.FAILURE, client_id=client_id,
                          subject_user_id=user_id, context=context,
                          details={"method": method, "reason": reason})
