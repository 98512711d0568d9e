"""Wire formats of the admin API for OAuth clients. Never a secret hash; a secret only once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Strict: a JSON "false" string or 0 is not quietly taken for a boolean on these fields.
REQUEST = ConfigDict(extra="forbid", strict=True)
# The default of PATCH fields that may be omitted but not null: never validated, so an
# omitted field stays out of model_fields_set while a null fails the field's type.
UNSET: Any = None
GRANTS_HELP = ("Allowed grant types. A client given password may also finish a sign-in "
               "with the mfa-otp grant, which is not given on its own")
SCOPES_HELP = "Allowed scopes; each item may hold several space-separated scope tokens"
REDIRECT_HELP = (
    "Authorization code flow: where codes may be sent, matched exactly; https, http on "
    "127.0.0.1 or [::1] only (any port matches, RFC 8252 §7.3), or a private-use scheme "
    "(com.example.app:/callback); no fragment"
)
LOGOUT_REDIRECT_HELP = (
    "OIDC RP-Initiated Logout: where /oauth/logout may return to, matched exactly (same "
    "rules as redirect_uris)"
)
FIRST_PARTY_HELP = ("A client of ours: the login page asks no consent for it (except a "
                    "public one on a loopback or private-use redirect, RFC 8252 §8.6); "
                    "required for the password grant (RFC 9700 §2.4)")
# Documented only: the service checks the name after stripping it, with its own message.
NAME_SCHEMA: dict[str, Any] = {"minLength": 1, "pattern": r"\S"}


class ClientRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    client_id: str
    name: str
    is_public: bool
    grant_types: list[str]
    scopes: list[str]
    is_active: bool
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    is_first_party: bool
    created_at: datetime
    updated_at: datetime


class ClientCreated(ClientRead):
    """The new client and its secret, which is shown only in this response."""

    client_secret: str | None = Field(description="null for a public client")


class ClientCreate(BaseModel):
    model_config = REQUEST

    name: str = Field(max_length=200, json_schema_extra=NAME_SCHEMA)
    grant_types: list[str] = Field(min_length=1, description=GRANTS_HELP)
    scopes: list[str] = Field(default_factory=list, description=SCOPES_HELP)
    is_public: bool = Field(default=False, description="No secret (native apps, SPAs)")
    redirect_uris: list[str] = Field(default_factory=list, description=REDIRECT_HELP)
    post_logout_redirect_uris: list[str] = Field(default_factory=list,
                                                 description=LOGOUT_REDIRECT_HELP)
    is_first_party: bool = Field(default=False, description=FIRST_PARTY_HELP)


class ClientUpdate(BaseModel):
    """PATCH: only the fields sent change. ``is_public`` is fixed at creation.

    An omitted field is not in ``model_fields_set``; an explicit ``null`` is a 422.
    Read the changes with ``model_dump(exclude_unset=True)``.
    """

    model_config = REQUEST

    name: str = Field(default=UNSET, max_length=200, json_schema_extra=NAME_SCHEMA)
    grant_types: list[str] = Field(default=UNSET, min_length=1, description=GRANTS_HELP)
    scopes: list[str] = Field(default=UNSET, description=SCOPES_HELP)
    is_active: bool = Field(
        default=UNSET, description="false makes client authentication fail (tokens stop working)"
    )
    redirect_uris: list[str] = Field(default=UNSET, description=REDIRECT_HELP)
    post_logout_redirect_uris: list[str] = Field(default=UNSET,
                                                 description=LOGOUT_REDIRECT_HELP)
    is_first_party: bool = Field(default=UNSET, description=FIRST_PARTY_HELP)


class ClientSecret(BaseModel):
    """A rotated secret, shown only in this response; the old one stops working at once in
    this process and within 5 seconds in the others (their client caches)."""

    client_id: str
    client_secret: str


class ClientPage(BaseModel):
    """One page of clients by client_id; pass ``next_cursor`` back as ``cursor`` for more."""

    items: list[ClientRead]
    next_cursor: str | None
