"""RFC 7662 token introspection, for resource servers.

Any active confidential client may introspect any token (a resource server checks the
tokens it receives), as in Keycloak and node-oidc-provider; public clients may not
(the router answers 401). The answer tells no more than the token grants:
``username`` only under ``profile``, ``email`` only under ``email``; a refresh token's
scope is what a refresh would grant now (DESIGN: refresh re-checks permissions), not
what its sign-in was granted; an access token's ``admin`` shows only while its user is
an admin (as the admin API checks it). Anything not active or unknown answers exactly
``{"active": false}`` (§2.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provider.oauth.grants.refresh_token import RefreshTokenGrant
from provider.oauth.scopes import ADMIN, EMAIL, PROFILE, refreshed_scope
from provider.tokens.jwt import TokenRejected
from provider.tokens.refresh import find_refresh_token
from provider.tokens.revocation import token_status

if TYPE_CHECKING:
    from provider.services import Services

INACTIVE: dict[str, Any] = {"active": False}
REFRESH_TOKEN = RefreshTokenGrant.grant_type


def _identity(scope: set[str] | frozenset[str], username: str | None,
              email: str | None) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    if PROFILE in scope and username:
        shown["username"] = username
    if EMAIL in scope and email:
        shown["email"] = email
    return shown


async def introspect(services: Services, token: str, hint: str | None) -> dict[str, Any]:
    """What ``token`` is, for an authenticated confidential client (any of them)."""
    now = services.clock.now()
    if token.count(".") == 2:
        try:
            claims = services.jwt.verify_access_token(token, now=now)
        except TokenRejected:
            return INACTIVE
        async with services.single.connect() as conn:
            status = await token_status(conn, claims)
        if status is None:
            return INACTIVE
        granted = claims.scope
        if ADMIN in granted and status.user_id is not None and not status.is_admin:
            # Demoted since the token was issued: the admin API already refuses it, so a
            # resource server that asks must not be told otherwise.
            granted = granted - {ADMIN}
        return {
            "active": True,
            "token_type": "Bearer",
            "scope": " ".join(sorted(granted)),
            "client_id": claims.client_id,
            "sub": claims.sub,
            "aud": claims.raw.get("aud"),
            "iss": claims.raw.get("iss"),
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
            **_identity(granted, status.username, status.email),
        }

    async with services.single.connect() as conn:
        stored = await find_refresh_token(conn, token, now=now)
    if stored is None or not stored.is_live:
        return INACTIVE
    client = await services.clients.get(stored.client_id)
    if client is None or REFRESH_TOKEN not in client.grant_types:
        # Deleted since the rotation predicate read it, or no longer allowed to refresh:
        # the token endpoint would refuse the token, so it is not active.
        return INACTIVE
    # The family's scope ∩ what its client and its user may have now.
    scope = refreshed_scope(None, stored.scope, client.scopes, may_admin=stored.is_admin)
    return {
        "active": True,
        "token_type": "refresh_token",
        "scope": scope,
        "client_id": stored.client_id,
        "sub": str(stored.user_id),
        "iss": services.jwt.issuer,
        "exp": int(stored.expires_at.timestamp()),
        "iat": int(stored.issued_at.timestamp()),
        **_identity(set(scope.split()), stored.username, stored.email),
    }
