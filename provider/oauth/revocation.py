"""RFC 7009 token revocation: refresh tokens (their whole session) and access tokens.

An unknown, invalid or another client's token gets the same 200 and changes nothing,
so the endpoint tells a caller nothing about tokens that are not its own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from provider.audit.service import NO_CONTEXT, EventType, RequestContext
from provider.clients.service import ClientInfo
from provider.tokens.jwt import TokenRejected
from provider.tokens.refresh import find_session_of
from provider.tokens.revocation import revoke_access_token, revoke_session, token_user_id

if TYPE_CHECKING:
    from provider.services import Services


async def revoke(services: Services, client: ClientInfo, token: str, hint: str | None,
                 context: RequestContext = NO_CONTEXT) -> None:
    now = services.clock.now()
    # The hint only orders the search (RFC 7009 §2.1); both kinds are always tried.
    looks_like_jwt = token.count(".") == 2
    order = ("access_token", "refresh_token")
    if hint == "refresh_token" or (hint is None and not looks_like_jwt):
        order = ("refresh_token", "access_token")
    for kind in order:
        if kind == "refresh_token":
            async with services.engine.begin() as conn:
                stored = await find_session_of(conn, token)
                if stored is not None and stored.client_id == client.client_id:
                    # Revoking a refresh token ends its session, and with it the session's
                    # access tokens at introspection and at our protected endpoints.
                    await revoke_session(conn, stored.session_id, now=now)
            if stored is not None and stored.client_id == client.client_id:
                _record(services, client, context, "refresh_token", stored.user_id,
                        session_id=str(stored.session_id))
                return
        elif looks_like_jwt:
            try:
                claims = services.jwt.verify_access_token(token, now=now)
            except TokenRejected:
                continue
            if claims.client_id != client.client_id:
                return
            async with services.engine.begin() as conn:
                await revoke_access_token(
                    conn, jti=claims.jti, expires_at=datetime.fromtimestamp(claims.exp, UTC),
                    now=now,
                )
            _record(services, client, context, "access_token", token_user_id(claims),
                    jti=claims.jti)
            return


def _record(services: Services, client: ClientInfo, context: RequestContext, token_type: str,
            user_id: uuid.UUID | None, **ids: str) -> None:
    """Queued after the revocation committed: it happened, whatever follows."""
    services.audit.record(EventType.TOKEN_REVOKED, actor=client.client_id,
                          client_id=client.client_id, subject_user_id=user_id,
                          context=context, details={"token_type": token_type, **ids})
