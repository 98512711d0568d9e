"""Verify provider's access tokens in a resource server.

    from provider_resource import TokenVerifier

    verifier = TokenVerifier(issuer="https://auth.example.com",
                             audience="https://auth.example.com")
    token = verifier.verify(access_token, scopes=["profile"])

``AsyncTokenVerifier`` is the same for asyncio; ``provider_resource.fastapi.RequireToken``
is a FastAPI dependency. Depends on httpx and joserfc only.
"""

from provider_resource.errors import (
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    TokenError,
    VerifierUnavailable,
)
from provider_resource.verifier import AccessToken, AsyncTokenVerifier, TokenVerifier, verify

__all__ = [
    "AccessToken",
    "AsyncTokenVerifier",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "MissingToken",
    "TokenError",
    "TokenVerifier",
    "VerifierUnavailable",
    "verify",
]
