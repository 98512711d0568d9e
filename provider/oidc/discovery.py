"""OpenID Connect Discovery 1.0 §3: the RFC 8414 facts plus the OIDC members."""

from __future__ import annotations

from typing import Any

from provider.oauth.metadata import authorization_server_metadata
from provider.settings import Settings

CLAIMS_SUPPORTED = [
    "sub", "iss", "aud", "exp", "iat", "auth_time", "amr", "sid", "azp", "jti",
    "email", "email_verified", "preferred_username", "name", "given_name", "family_name",
]


def openid_configuration(settings: Settings, signing_algs: list[str]) -> dict[str, Any]:
    """``signing_algs``: the algorithms ID tokens (and access tokens) are signed with,
    the configured one first (provider.services.Services.signing_algorithms)."""
    return {
        **authorization_server_metadata(settings),
        # No authorization endpoint yet: this provider issues tokens through its token
        # endpoint only (password, refresh_token, client_credentials).
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": signing_algs,
        "userinfo_signing_alg_values_supported": ["none"],
        "claims_supported": CLAIMS_SUPPORTED,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
