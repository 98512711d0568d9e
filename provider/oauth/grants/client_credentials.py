"""RFC 6749 §4.4: the client acts on its own behalf; no refresh token (§4.4.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from provider.clients.service import ClientInfo
from provider.oauth.errors import InvalidScope, UnauthorizedClient
from provider.oauth.grants.base import TokenRequest, TokenResponse, token_response
from provider.oauth.scopes import USER_ONLY_SCOPES, parse_scope, resolve_scope

if TYPE_CHECKING:
    from provider.services import Services


class ClientCredentialsGrant:
    grant_type: ClassVar[str] = "client_credentials"
    allows_public_clients: ClassVar[bool] = False

    async def exchange(
        self, services: Services, request: TokenRequest, client: ClientInfo
    ) -> TokenResponse:
        if client.is_public:
            raise UnauthorizedClient("A public client cannot use client_credentials.")
        allowed = [s for s in client.scopes if s not in USER_ONLY_SCOPES]
        requested = parse_scope(request.form.get("scope"))
        if requested is not None and any(s in USER_ONLY_SCOPES for s in requested):
            raise InvalidScope("User scopes cannot be granted to a client acting for itself.")
        scope = resolve_scope(requested, allowed, may_admin=False)
        # `sub` is the client itself, never a user id (client ids cannot look like one).
        return token_response(services, request, sub=client.client_id,
                              client_id=client.client_id, scope=scope)
