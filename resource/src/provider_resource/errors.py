"""Why a request is refused, in RFC 6750 terms: each error knows its status code and its
``WWW-Authenticate`` challenge, so any framework can answer it the same way.

What the client is told is deliberately vague for a bad token ("invalid, expired or
revoked"): telling a forger which check failed helps the forger. ``reason`` says which,
for your logs.
"""

from __future__ import annotations

from collections.abc import Iterable


def _quoted(value: str) -> str:
    # RFC 6750 §3: the values are quoted strings; keep them within its character set.
    return value.replace("\\", "").replace('"', "")


class TokenError(Exception):
    """A request that cannot be served with the token it brought."""

    status_code = 401
    error: str | None = "invalid_token"
    description = "The access token is invalid, expired or revoked."

    def __init__(self, reason: str = "", *, description: str | None = None) -> None:
        super().__init__(reason or self.description)
        self.reason = reason
        if description is not None:
            self.description = description

    def challenge(self, realm: str | None = None) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 §3)."""
        parts = [f'realm="{_quoted(realm)}"'] if realm else []
        if self.error is not None:
            parts.append(f'error="{self.error}"')
            parts.append(f'error_description="{_quoted(self.description)}"')
        return "Bearer" + (" " + ", ".join(parts) if parts else "")

    def headers(self, realm: str | None = None) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge(realm)}


class MissingToken(TokenError):
    """No bearer token at all: a bare challenge, without an error code (RFC 6750 §3.1)."""

    error = None
    description = "An access token is required."


class InvalidRequest(TokenError):
    """A malformed request, e.g. a token in the query string (RFC 6750 §2.3, §3.1)."""

    status_code = 400
    error = "invalid_request"
    description = "The request is malformed."


class InvalidToken(TokenError):
    """Forged, malformed, expired, revoked, or not meant for this resource server."""


class InsufficientScope(TokenError):
    """A valid token without the scopes the route needs: 403 (RFC 6750 §3.1)."""

    status_code = 403
    error = "insufficient_scope"
    description = "The access token does not grant the scope this request needs."

    def __init__(self, scopes: Iterable[str], reason: str = "") -> None:
        self.scopes = tuple(scopes)
        super().__init__(reason or f"missing scope {' '.join(self.scopes)}")

    def challenge(self, realm: str | None = None) -> str:
        return super().challenge(realm) + f', scope="{_quoted(" ".join(self.scopes))}"'


class VerifierUnavailable(TokenError):
    """The provider could not be asked (its metadata, keys or introspection): try again
    later. Answered 503 with ``Retry-After``; nothing is said about the token."""

    status_code = 503
    error = None
    description = "Tokens cannot be verified right now. Try again shortly."
    retry_after = 5

    def headers(self, realm: str | None = None) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ConfigurationError(VerifierUnavailable):
    """The provider's metadata contradicts the configuration (e.g. another issuer)."""
