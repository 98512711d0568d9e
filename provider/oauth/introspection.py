"""RFC 7662 token introspection, for the confidential client the token was issued to.

Anything not active, not ours to see, or unknown answers exactly ``{"active": false}``.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from provider.clients.service import ClientInfo
from provider.oauth.grants.base import GrantContext
from provider.tokens.jwt import AccessClaims, TokenRejected
from provider.tokens.service import find_refresh_token, session_is_live, user_token_is_live
from provider.users.models import User

INACTIVE: dict[str, Any] = {"active": False}
users = cast(Table, User.__table__)


async def introspect(
    ctx: GrantContext, client: ClientInfo, token: str, hint: str | None
) -> dict[str, Any]:
    now = ctx.clock.now()
    if token.count(".") == 2:
        try:
            claims = ctx.jwt.verify_access_token(token, now=now)
        except TokenRejected:
            return INACTIVE
        if claims.client_id != client.client_id:
            return INACTIVE
        async with ctx.engine.connect() as conn:
            username = await _live_user(conn, claims)
        if username is False:
            return INACTIVE
        return {
            "active": True,
            "token_type": "Bearer",
            "scope": " ".join(sorted(claims.scope)),
            "client_id": claims.client_id,
            "sub": claims.sub,
            "aud": claims.raw.get("aud"),
            "iss": claims.raw.get("iss"),
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
            **({"username": username} if isinstance(username, str) else {}),
        }

    async with ctx.engine.connect() as conn:
        stored = await find_refresh_token(conn, token)
        if stored is None or stored.session.client_id != client.client_id:
            return INACTIVE
        if not stored.is_live(now):
            return INACTIVE
        active = (
            await conn.execute(
                select(users.c.is_active).where(users.c.id == stored.session.user_id)
            )
        ).scalar()
    if not active:
        return INACTIVE
    return {
        "active": True,
        "token_type": "refresh_token",
        "scope": stored.session.scope,
        "client_id": stored.session.client_id,
        "sub": str(stored.session.user_id),
        "iss": ctx.jwt.issuer,
        "exp": int(min(stored.expires_at, stored.session.family_expires_at).timestamp()),
        "iat": int(stored.issued_at.timestamp()),
    }


async def _live_user(conn: AsyncConnection, claims: AccessClaims) -> str | bool | None:
    """The username of the token's user if the token still stands, else False.

    A client_credentials token has no user: None when it is not revoked.
    """
    try:
        user_id = uuid.UUID(claims.sub)
    except ValueError:
        user_id = None
    family = uuid.UUID(claims.sid) if claims.sid else None
    if user_id is None:
        row = (await conn.execute(select(session_is_live(family, claims.jti)))).scalar()
        return None if row else False
    live = user_token_is_live(family, claims.jti, claims.iat)
    found = (
        await conn.execute(
            select(users.c.username, users.c.email)
            .where(users.c.id == user_id, users.c.is_active.is_(True), live)
        )
    ).first()
    if found is None:
        return False
    return str(found.username or found.email)
