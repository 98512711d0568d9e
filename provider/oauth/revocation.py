"""RFC 7009 token revocation: refresh tokens (and their family) and access tokens.

An unknown, invalid or another client's token gets the same 200 and changes nothing,
so the endpoint tells a caller nothing about tokens that are not its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from provider.clients.service import ClientInfo
from provider.oauth.grants.base import GrantContext
from provider.tokens.jwt import TokenRejected
from provider.tokens.service import find_refresh_token, revoke_access_token, revoke_family


async def revoke(ctx: GrantContext, client: ClientInfo, token: str, hint: str | None) -> None:
    now = ctx.clock.now()
    # The hint only orders the search (RFC 7009 §2.1); both kinds are always tried.
    looks_like_jwt = token.count(".") == 2
    order = ("access_token", "refresh_token")
    if hint == "refresh_token" or (hint is None and not looks_like_jwt):
        order = ("refresh_token", "access_token")
    for kind in order:
        if kind == "refresh_token":
            async with ctx.engine.begin() as conn:
                stored = await find_refresh_token(conn, token)
                if stored is not None and stored.session.client_id == client.client_id:
                    # Revoking a refresh token ends its family, and with it the family's
                    # access tokens at introspection and at our protected endpoints.
                    await revoke_family(conn, stored.session.family_id, now=now)
                    return
        elif looks_like_jwt:
            try:
                claims = ctx.jwt.verify_access_token(token, now=now)
            except TokenRejected:
                continue
            if claims.client_id != client.client_id:
                return
            async with ctx.engine.begin() as conn:
                await revoke_access_token(
                    conn, jti=claims.jti, expires_at=datetime.fromtimestamp(claims.exp, UTC),
                    now=now,
                )
            return
