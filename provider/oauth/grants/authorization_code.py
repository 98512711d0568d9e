"""RFC 6749 §4.1.3 as profiled by OAuth 2.1 §4.1.3: the authorization code grant, with
PKCE (RFC 7636 §4.5-4.6) required of every client.

The code is redeemed by one conditional statement that checks every binding at once
(this client, the redirect URI of the authorization request, S256 of the verifier,
unused, unexpired, the user unchanged) and records the session it starts, in the
transaction that starts it. A code presented again after its one use is refused and
revokes what that use issued (RFC 6749 §4.1.2, §10.5): the session, and with it the
refresh token and, at our endpoints, the access token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from provider.audit.service import EventType
from provider.audit.service import Outcome as AuditOutcome
from provider.clients.service import ClientInfo
from provider.db import uuid7
from provider.oauth.authorize import is_valid_verifier, s256
from provider.oauth.errors import InvalidGrant, InvalidRequest
from provider.oauth.grants.base import TokenRequest, TokenResponse, require, token_response
from provider.oauth.scopes import refreshed_scope
from provider.tokens.authorization_codes import find_used, redeem_code
from provider.tokens.refresh import issue_refresh_token, new_session, start_session
from provider.tokens.revocation import revoke_session

if TYPE_CHECKING:
    from provider.services import Services

INVALID_CODE = ("The authorization code is invalid, expired, already used, or was issued "
                "to another client or for another redirect_uri or code_verifier.")


class AuthorizationCodeGrant:
    grant_type: ClassVar[str] = "authorization_code"
    allows_public_clients: ClassVar[bool] = True

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        form = request.form
        code = require(form, "code")
        verifier = form.get("code_verifier")
        if verifier is None:
            raise InvalidRequest("PKCE is required: send the code_verifier.")
        if not is_valid_verifier(verifier):
            raise InvalidRequest("The code_verifier must be 43 to 128 characters of "
                                 "A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1).")
        settings = services.settings
        now = services.clock.now()
        session_id = uuid7()
        async with services.engine.begin() as conn:
            redeemed = await redeem_code(
                conn, code=code, client_id=client.client_id,
                redirect_uri=form.get("redirect_uri"), code_challenge=s256(verifier),
                session_id=session_id, now=now)
            if redeemed is not None:
                grant = redeemed.grant
                # What the client and the user may have now (a scope taken from the
                # client, or the admin role, since the consent is not granted).
                scope = refreshed_scope(None, grant.scope, client.scopes,
                                        may_admin=redeemed.user_is_admin)
                session = new_session(
                    user_id=grant.user_id, client_id=client.client_id, scope=scope,
                    amr=grant.amr, now=now, absolute_ttl=settings.refresh_token_absolute_ttl,
                    auth_time=grant.auth_time, session_id=session_id)
                await start_session(conn, session, session_epoch=grant.session_epoch,
                                    now=now)
                refresh_token = None
                if "refresh_token" in client.grant_types:
                    refresh_token = await issue_refresh_token(
                        conn, session=session, now=now, idle_ttl=settings.refresh_token_ttl)
            else:
                used = await find_used(conn, code)
                if used is not None and used.session_id is not None:
                    # The code came back: whoever holds it may be an attacker, so what
                    # its first use issued ends (kept: the transaction commits).
                    await revoke_session(conn, used.session_id, now=now)
        if redeemed is None:
            # A code used up by a consent's withdrawal (no session) is no reuse.
            if used is not None and used.session_id is not None:
                services.audit.record(
                    EventType.AUTHORIZATION_CODE_REUSED, actor=client.client_id,
                    outcome=AuditOutcome.FAILURE, client_id=client.client_id,
                    subject_user_id=used.user_id, context=request.context,
                    details={"session_id": str(used.session_id), "session": "revoked"})
            raise InvalidGrant(INVALID_CODE)
        services.audit.record(EventType.LOGIN, actor=client.client_id,
                              client_id=client.client_id, subject_user_id=grant.user_id,
                              context=request.context,
                              details={"method": "authorization_code"})
        return token_response(services, request, sub=str(grant.user_id),
                              client_id=client.client_id, scope=scope, session=session,
                              refresh_token=refresh_token, nonce=grant.nonce)
