"""OpenID Connect Discovery 1.0 §3: the RFC 8414 facts plus the OIDC members."""

from __future__ import annotations

from typing import Any

from provider.oauth.authorize import PROMPTS
from provider.oauth.metadata import authorization_server_metadata
from provider.settings import Settings

CLAIMS_SUPPORTED = [
    "sub", "iss", "aud", "exp", "iat", "auth_time", "amr", "sid", "azp", "jti", "nonce",
    "at_hash",
    "email", "email_verified", "preferred_username", "name", "given_name", "family_name",
]


def openid_configuration(settings: Settings, signing_algs: list[str]) -> dict[str, Any]:
    """``signing_algs``: the algorithms ID tokens (and access tokens) are signed with,
    the configured one first (provider.services.Services.signing_algorithms)."""
    return {
        **authorization_server_metadata(settings),
        # OIDC RP-Initiated Logout 1.0 §2.1.
        "end_session_endpoint": f"{settings.issuer}/oauth/logout",
        # OIDC Prompt Create (the values /oauth/authorize understands).
        "prompt_values_supported": list(PROMPTS),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": signing_algs,
        "userinfo_signing_alg_values_supported": ["none"],
        "claims_supported": CLAIMS_SUPPORTED,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
    }
