"""RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2).

Every use returns a new refresh token with the original scope; presenting a rotated
token revokes its whole family. A narrower ``scope`` narrows only the access token.
"""

from __future__ import annotations

from datetime import datetime
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
from provider.tokens.service import (
    Outcome,
    Rotation,
    Session,
    digest,
    rotate_in_one_statement,
    rotate_refresh_token,
)


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
        rotation = None
        if requested is None and ctx.single is not ctx.engine:
            # The common case on PostgreSQL: one atomic statement in autocommit, no
            # BEGIN/COMMIT round trips. Any refusal is explained in a transaction below.
            async with ctx.single.connect() as conn:
                rotation = await rotate_in_one_statement(
                    conn, digest(token), client.client_id, now, ctx.settings.refresh_token_ttl)
        if rotation is not None:
            session = rotation.session
        else:
            rotation, session = await self._rotate_in_transaction(
                token, client.client_id, requested, now)
        if rotation.outcome is not Outcome.ROTATED or session is None:
            raise InvalidGrant()
        scope = " ".join(requested) if requested is not None else session.scope
        return token_response(ctx, sub=str(session.user_id), client_id=client.client_id,
                              scope=scope, session=session, refresh_token=rotation.refresh_token)

    async def _rotate_in_transaction(
        self, token: str, client_id: str, requested: list[str] | None, now: datetime
    ) -> tuple[Rotation, Session | None]:
        ctx = self.ctx
        # The transaction commits before we answer, also when reuse revoked the family.
        async with ctx.engine.begin() as conn:
            rotation = await rotate_refresh_token(
                conn, token=token, client_id=client_id, now=now,
                idle_ttl=ctx.settings.refresh_token_ttl,
                reuse_grace=ctx.settings.refresh_reuse_grace,
            )
            session = rotation.session
            if session is not None and requested is not None:
                granted = session.scope.split()
                if not requested or any(s not in granted for s in requested):
                    # Nothing may stay written: raising inside the block rolls back.
                    raise InvalidScope("The requested scope exceeds the original grant.")
        return rotation, session
