"""RFC 8414 authorization server metadata; OIDC discovery adds to the same facts."""

from __future__ import annotations

from typing import Any

from provider.oauth.authorize import CODE_CHALLENGE_METHODS, RESPONSE_MODES, RESPONSE_TYPES
from provider.oauth.grants import GRANT_TYPES
from provider.oauth.scopes import STANDARD_SCOPES
from provider.settings import Settings

AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def authorization_server_metadata(settings: Settings) -> dict[str, Any]:
    issuer = settings.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "scopes_supported": list(STANDARD_SCOPES),
        # The authorization code flow only (OAuth 2.1: no implicit, no hybrid), answered
        # in the query, PKCE S256 required of every client, `iss` in every answer.
        "response_types_supported": list(RESPONSE_TYPES),
        "response_modes_supported": list(RESPONSE_MODES),
        "code_challenge_methods_supported": list(CODE_CHALLENGE_METHODS),
        "authorization_response_iss_parameter_supported": True,
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS[:2],
        "service_documentation": f"{issuer}/docs",
    }
