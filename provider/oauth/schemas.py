"""Wire formats of the OAuth endpoints (RFC 6749 §5.1, RFC 7662 §2.2, RFC 8414)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int
    scope: str
    refresh_token: str | None = None
    id_token: str | None = None


class OAuthErrorBody(BaseModel):
    error: str
    error_description: str | None = None


class StepUpBody(OAuthErrorBody):
    """401 of an endpoint that needs a recent sign-in (RFC 9470 §3), or any bearer error."""

    max_age: int | None = Field(default=None, description=(
        "With insufficient_user_authentication: how many seconds old the token's "
        "sign-in (auth_time) may be; sign in again and retry"))


class MfaRequiredBody(OAuthErrorBody):
    """403 of the password grant for a user with TOTP: the password was right."""

    error: str = "mfa_required"
    mfa_token: str



class IntrospectionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    active: bool
    scope: str | None = None
    client_id: str | None = None
    username: str | None = None
    email: str | None = None
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None
    sub: str | None = None
    aud: str | None = None
    iss: str | None = None
    jti: str | None = None


class UserInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    sub: str
    email: str | None = None
    email_verified: bool | None = None
    preferred_username: str | None = None
