"""RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2).

Every use returns a new refresh token with the original scope; presenting a rotated
token revokes its whole family. A narrower ``scope`` narrows only the access token.
"""

from __future__ import annotations

from typing import ClassVar

from provider.clients.service import ClientInfo
from provider.oauth.errors import InvalidGrant, InvalidScope
from provider.oauth.grants.base import (
    GrantContext,
    TokenRequest,
    TokenResponse,
    parse_scope,
    require,
    token_response,
)
from provider.tokens.service import Outcome, rotate_refresh_token


class RefreshTokenGrant:
    grant_type: ClassVar[str] = "refresh_token"

    def __init__(self, ctx: GrantContext) -> None:
        self.ctx = ctx

    async def exchange(self, request: TokenRequest, client: ClientInfo) -> TokenResponse:
        form = request.form
        ctx = self.ctx
        token = require(form, "refresh_token")
        requested = parse_scope(form.get("scope"))
        now = ctx.clock.now()
        # The transaction commits before we answer, also when reuse revoked the family.
        async with ctx.engine.begin() as conn:
            rotation = await rotate_refresh_token(
                conn, token=token, client_id=client.client_id, now=now,
                idle_ttl=ctx.settings.refresh_token_ttl,
                reuse_grace=ctx.settings.refresh_reuse_grace,
            )
            session = rotation.session
            if session is not None and requested is not None:
                granted = session.scope.split()
                if not requested or any(s not in granted for s in requested):
                    # Nothing may stay written: raising inside the block rolls back.
                    raise InvalidScope("The requested scope exceeds the original grant.")
        if rotation.outcome is not Outcome.ROTATED or session is None:
            raise InvalidGrant()
        scope = " ".join(requested) if requested is not None else session.scope
        return token_response(ctx, sub=str(session.user_id), client_id=client.client_id,
                              scope=scope, session=session, refresh_token=rotation.refresh_token)
