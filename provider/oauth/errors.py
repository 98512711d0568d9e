"""OAuth errors, one class per code (RFC 6749 §5.2, RFC 6750 §3.1).

Each renders itself as ``{"error", "error_description"}`` with ``Cache-Control: no-store``,
plus ``WWW-Authenticate`` or ``Retry-After`` where the RFCs ask for them.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from starlette.responses import JSONResponse, Response

from provider.errors import ExpectedError

# RFC 6749 §5.1 asks this of token responses; their errors get the same.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(ExpectedError):
    error: ClassVar[str] = "invalid_request"
    status: ClassVar[int] = 400
    description: ClassVar[str] = "The request is invalid."

    def __init__(self, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or self.description)
        self.error_description = description or self.description
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.error_description, **self.extra}

    def headers(self) -> dict[str, str]:
        return {}

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status,
                            headers={**NO_STORE, **self.headers()})


class InvalidRequest(OAuthError):
    error = "invalid_request"


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# RFC 6749 §5.2's characters of an error_description, less the space: a scope token's
# (§3.3), short enough to quote.
_PLAIN_VALUE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")


def the_parameter(name: str) -> str:
    """A sent parameter's name for an error_description: "The scope parameter", or "A
    parameter" when the name is not plain ASCII. RFC 6749 §5.2 allows printable ASCII
    only there, and a client's bytes are not echoed back."""
    return f"The {name} parameter" if _PLAIN_NAME.fullmatch(name) else "A parameter"


def quoted(value: str) -> str:
    """A sent value for an error_description: ": value" when it is one token of plain
    ASCII, else nothing (see the_parameter)."""
    return f": {value}" if _PLAIN_VALUE.fullmatch(value) else ""


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401
    description = "Client authentication failed."

    def __init__(self, description: str | None = None, *, used_basic: bool = False) -> None:
        super().__init__(description)
        self.used_basic = used_basic

    def headers(self) -> dict[str, str]:
        # RFC 6749 §5.2: a client that tried the Authorization header gets a challenge for it.
        if self.used_basic:
            return {"WWW-Authenticate": 'Basic realm="provider", charset="UTF-8"'}
        return {}


class InvalidGrant(OAuthError):
    error = "invalid_grant"
    description = "The grant or refresh token is invalid, expired or revoked."


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"
    description = "The client is not allowed to use this grant type."


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    description = "The grant type is not supported."


class InvalidScope(OAuthError):
    error = "invalid_scope"
    description = "The requested scope is invalid, unknown or exceeds what is allowed."




# Errors of the authorization endpoint, sent back to the client's redirect URI (RFC 6749
# §4.1.2.1, OIDC Core §3.1.2.6) rather than rendered as JSON.
class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"
    description = "Only response_type=code is supported."


class AccessDenied(OAuthError):
    error = "access_denied"
    description = "The user denied the request."


class LoginRequired(OAuthError):
    error = "login_required"
    description = "The user is not signed in."


class ConsentRequired(OAuthError):
    error = "consent_required"
    description = "The user has not consented to this request."


class RequestNotSupported(OAuthError):
    error = "request_not_supported"
    description = "Request objects are not supported."


class RequestUriNotSupported(OAuthError):
    error = "request_uri_not_supported"
    description = "request_uri is not supported."


class MfaRequired(OAuthError):
    """The password was right and the user has a second factor: 403 with an mfa_token to
    finish with (Auth0's convention; DESIGN.md, README "Two-step verification")."""

    error = "mfa_required"
    status = 403
    description = "Multi-factor authentication is required: send a one-time code."

    def __init__(self, mfa_token: str) -> None:
        super().__init__(mfa_token=mfa_token)


class SlowDown(OAuthError):
    """Login throttling: 429 with Retry-After (never a permanent lockout)."""

    error = "slow_down"
    status = 429
    description = "Too many attempts. Try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503
    description = "The server cannot handle the request right now. Try again later."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class BearerError(OAuthError):
    """Errors of bearer-protected resources (RFC 6750 §3)."""

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer realm="provider", error="{self.error}", '
                f'error_description="{self.error_description}"'
            )
        }


class MissingToken(BearerError):
    """No credentials at all: 401 with a bare challenge and no error code (§3.1)."""

    error = "invalid_token"
    status = 401
    description = "An access token is required."

    def body(self) -> dict[str, Any]:
        return {"error": "invalid_token", "error_description": self.error_description}

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="provider"'}


class InvalidToken(BearerError):
    error = "invalid_token"
    status = 401
    description = "The access token is invalid, expired or revoked."


class InvalidBearerRequest(BearerError):
    error = "invalid_request"
    status = 400
    description = "The request carries the access token in an unsupported way."


class InsufficientUserAuthentication(BearerError):
    """The token's sign-in is older than the change allows (RFC 9470 §3): 401 with the
    ``max_age`` to meet; the client signs the user in again and retries."""

    error = "insufficient_user_authentication"
    status = 401
    description = "This change needs a recent sign-in. Sign in again, then retry."

    def __init__(self, max_age: int) -> None:
        super().__init__(max_age=max_age)
        self.max_age = max_age

    def headers(self) -> dict[str, str]:
        challenge = super().headers()["WWW-Authenticate"]
        return {"WWW-Authenticate": f'{challenge}, max_age="{self.max_age}"'}


class InsufficientScope(BearerError):
    error = "insufficient_scope"
    status = 403
    description = "The access token lacks the scope this resource requires."

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer realm="provider", error="insufficient_scope", scope="{self.scope}"'
            )
        }
