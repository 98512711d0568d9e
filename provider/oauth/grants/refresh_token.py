"""RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2).

Every use returns a new refresh token of the same session; presenting a rotated token
revokes the session. The scope granted is the session's (or a narrower requested one)
∩ what the client and the user may have now: lost permissions end at the next refresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from provider.audit.service import EventType
from provider.audit.service import Outcome as AuditOutcome
from provider.clients.service import ClientInfo
from provider.oauth.errors import InvalidGrant
from provider.oauth.grants.base import TokenRequest, TokenResponse, require, token_response
from provider.oauth.scopes import check_narrowing, parse_scope, refreshed_scope
from provider.tokens.refresh import Outcome, Session, rotate

if TYPE_CHECKING:
    from provider.services import Services


class RefreshTokenGrant:
    grant_type: ClassVar[str] = "refresh_token"
    allows_public_clients: ClassVar[bool] = True

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        token = require(request.form, "refresh_token")
        requested = parse_scope(request.form.get("scope"))

        def check(session: Session) -> None:
            check_narrowing(requested, session.scope)

        settings = services.settings
        rotation = await rotate(
            services.engine, services.single, token=token, client_id=client.client_id,
            now=services.clock.now(), idle_ttl=settings.refresh_token_ttl,
            reuse_grace=settings.refresh_reuse_grace,
            # Only a narrowed scope can make a rotation fail after the fact.
            check=check if requested is not None else None,
        )
        session = rotation.session
        if rotation.outcome is Outcome.REUSED:
            services.audit.record(
                EventType.REFRESH_TOKEN_REUSED, actor=client.client_id,
                outcome=AuditOutcome.FAILURE, client_id=client.client_id,
                subject_user_id=rotation.user_id, context=request.context,
                details={"session_id": str(rotation.session_id), "session": "revoked"},
            )
        if rotation.outcome is not Outcome.ROTATED or session is None:
            raise InvalidGrant()
        scope = refreshed_scope(requested, session.scope, client.scopes,
                                may_admin=session.user_is_admin)
        return token_response(services, request, sub=str(session.user_id),
                              client_id=client.client_id, scope=scope, session=session,
                              refresh_token=rotation.refresh_token)
