"""RFC 6749 §4.4: the client acts on its own behalf; no refresh token (§4.4.3)."""

from __future__ import annotations

from typing import ClassVar

from provider.clients.service import ClientInfo
from provider.oauth.errors import InvalidScope, UnauthorizedClient
from provider.oauth.grants.base import (
    GrantContext,
    TokenRequest,
    TokenResponse,
    parse_scope,
    resolve_scope,
    token_response,
)

# Scopes that only mean something for a user.
USER_ONLY_SCOPES = frozenset({"openid", "profile", "email", "admin", "offline_access"})


class ClientCredentialsGrant:
    grant_type: ClassVar[str] = "client_credentials"

    def __init__(self, ctx: GrantContext) -> None:
        self.ctx = ctx

    async def exchange(self, request: TokenRequest, client: ClientInfo) -> TokenResponse:
        form = request.form
        if client.is_public:
            raise UnauthorizedClient("A public client cannot use client_credentials.")
        allowed = [s for s in client.scopes if s not in USER_ONLY_SCOPES]
        requested = parse_scope(form.get("scope"))
        if requested is not None and any(s in USER_ONLY_SCOPES for s in requested):
            raise InvalidScope("User scopes cannot be granted to a client acting for itself.")
        scope = resolve_scope(requested, allowed, may_admin=False)
        # `sub` is the client itself, never a user id (client ids cannot look like one).
        return token_response(self.ctx, sub=client.client_id, client_id=client.client_id,
                              scope=scope)
