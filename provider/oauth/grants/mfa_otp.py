"""Finishing a password sign-in with a second factor: ``grant_type=
urn:provider:params:oauth:grant-type:mfa-otp`` with ``mfa_token`` and ``otp`` (RFC 6749
§4.5 extension grant; the open counterpart of Auth0's ``mfa-otp``).

The mfa_token came from a 403 ``mfa_required`` answer of the password grant: proof that
the password was right, bound to the user, this client and the scope, for 5 minutes.
Each submission reserves one of its 5 attempts before the code is checked, and one slot
of the user's throttle; the token is used up by the first right code, in the same
transaction that starts the session. ``otp`` is a TOTP code or a recovery code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from sqlalchemy import Table, select

from provider.clients.service import ClientInfo
from provider.mfa.service import AMR, CheckThrottled, SecondFactorLocked, WrongCode
from provider.oauth.errors import InvalidGrant, InvalidScope, SlowDown
from provider.oauth.grants.base import TokenRequest, TokenResponse, require
from provider.oauth.grants.password import (
    notify_second_factor,
    second_factor_refused,
    signed_in,
    start_sign_in,
    wrong_second_factor,
)
from provider.oauth.scopes import parse_scope, refreshed_scope
from provider.users.models import User

if TYPE_CHECKING:
    from provider.services import Services

MFA_OTP = "urn:provider:params:oauth:grant-type:mfa-otp"
# (S105: a message, not a secret.)
INVALID_MFA_TOKEN = ("The mfa_token is invalid, expired, already used, out of attempts, "  # noqa: S105
                     "or was issued to another client.")
users = cast(Table, User.__table__)


class _TokenGone(Exception):
    """The token was used (or its user's sessions ended) while this code was checked."""


class MfaOtpGrant:
    grant_type: ClassVar[str] = MFA_OTP
    allows_public_clients: ClassVar[bool] = True
    # A client may finish what its password grant started: the mfa_token can only come
    # from there, and it is bound to the client. Not a grant type of its own to give.
    client_grant_type: ClassVar[str] = "password"

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        form = request.form
        token = require(form, "mfa_token")
        otp = require(form, "otp")
        requested = parse_scope(form.get("scope"))
        mfa = services.mfa
        now = services.clock.now()
        # Its own statement, kept whatever happens next: a wrong code keeps its attempt.
        async with services.single.begin() as conn:
            reserved = await mfa.reserve_token_attempt(conn, token=token,
                                                       client_id=client.client_id, now=now)
        if reserved is None:
            raise InvalidGrant(INVALID_MFA_TOKEN)
        if requested is not None and set(requested) != set(reserved.scope.split()):
            # Bound to the scope of the password step: no widening, no other scope.
            raise InvalidScope("The scope must be the one the mfa_token was issued for.")
        try:
            locks = await mfa.reserve(reserved.user_id)
        except (CheckThrottled, SecondFactorLocked) as exc:
            # Never checked: the token's attempt is given back, the user's wait stands.
            async with services.single.begin() as conn:
                await mfa.give_back_attempt(conn, reserved.id)
            if isinstance(exc, SecondFactorLocked):
                second_factor_refused(services, request, client, reserved.user_id)
            raise SlowDown(exc.retry_after) from None
        try:
            async with services.engine.begin() as conn:
                factor = await mfa.check(conn, user_id=reserved.user_id, code=otp, now=now)
                if factor is None:
                    raise WrongCode()
                # After the code: when another request used the token meanwhile, this
                # transaction rolls back and the code (a recovery code) is not spent.
                if not await mfa.consume_token(conn, token=reserved, now=now):
                    raise _TokenGone()
                is_admin = bool((await conn.execute(
                    select(users.c.is_admin).where(users.c.id == reserved.user_id)
                )).scalar())
                # The scope of the password step, less what the client or the user lost
                # since (like a refresh).
                scope = refreshed_scope(None, reserved.scope, client.scopes,
                                        may_admin=is_admin)
                session, refresh_token = await start_sign_in(
                    services, conn, client, user_id=reserved.user_id, scope=scope,
                    session_epoch=reserved.session_epoch, amr=AMR[factor])
        except WrongCode:
            await wrong_second_factor(services, request, client, reserved.user_id,
                                      locks=locks)
        except _TokenGone:
            await mfa.unchecked(reserved.user_id)  # not a wrong code
            raise InvalidGrant(INVALID_MFA_TOKEN) from None
        except BaseException:
            await mfa.unchecked(reserved.user_id)  # no verdict on the code
            raise
        await mfa.refund(reserved.user_id)
        await notify_second_factor(services, reserved.user_id, factor)
        return signed_in(services, request, client, session, refresh_token, factor=factor)
